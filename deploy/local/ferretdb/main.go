// Command ferretdb runs embedded FerretDB v1 (MongoDB wire protocol) on the SQLite backend for the
// local mailsync stack. It exists because the upstream cmd/ferretdb built with `go install` panics
// on a missing build/version/version.txt (FerretDB issue 2982); the embeddable package does not.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:37017", "TCP address for the MongoDB wire protocol")
	dataDir := flag.String("sqlite-dir", "data", "directory holding one SQLite file per database")
	logLevel := flag.String("log-level", "info", "log level: debug, info, warn or error")
	// WAL with synchronous=NORMAL survives a crash of this process (SIGKILL included) and skips an
	// fsync per commit; only an OS crash or power loss can undo the last commits. FULL is SQLite's default.
	synchronous := flag.String("sqlite-synchronous", "normal", "SQLite synchronous pragma: normal or full")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fatal("bad -log-level %q: %v", *logLevel, err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	// The SQLite backend wants an existing directory as a "file:" URI ending in "/".
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		fatal("bad -sqlite-dir %q: %v", *dataDir, err)
	}
	if err = os.MkdirAll(dir, 0o700); err != nil {
		fatal("cannot create %s: %v", dir, err)
	}
	if *synchronous != "normal" && *synchronous != "full" {
		fatal("bad -sqlite-synchronous %q: normal or full", *synchronous)
	}
	query := url.Values{"_pragma": {"synchronous(" + *synchronous + ")"}}
	sqliteURL := (&url.URL{Scheme: "file", Path: filepath.ToSlash(dir) + "/", RawQuery: query.Encode()}).String()

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	if err != nil {
		fatal("cannot start FerretDB: %v", err)
	}

	// SIGTERM/SIGINT cancel the context; Run then closes the listener, connections and backend.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	logger.Info("ferretdb listening", "addr", *listen, "sqlite", sqliteURL, "uri", f.MongoDBURI())
	if err = f.Run(ctx); err != nil {
		fatal("FerretDB stopped with error: %v", err)
	}
	logger.Info("ferretdb stopped")
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ferretdb: "+format+"\n", args...)
	os.Exit(1)
}
