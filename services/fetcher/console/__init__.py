"""The operator console (issue #10): server-rendered pages under /console, served by the fetcher."""
