"""IMAP session layer of the fetcher: a sans-I/O response parser and an asyncio session over it."""
