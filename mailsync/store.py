"""MongoDB access through PyMongo's async API (`AsyncMongoClient`; motor is deprecated).

Locally the server is FerretDB v1, so we keep to what it supports: CRUD, upserts keyed by natural ids,
unique indexes, `$set/$inc/$max/$addToSet/$pull`, and simple aggregations — no transactions, change
streams, TTL indexes or `$lookup`. FerretDB v1.24 also mis-computes a `$group` with more than one
accumulator (only the first one sees documents): use one accumulator per `$group`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from .settings import ServiceSettings

Document = dict[str, Any]


def make_client(settings: ServiceSettings) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        settings.mongo_uri.get_secret_value(),
        appname=f"mailsync-{settings.service_name}",
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
        tz_aware=True,
    )


def database(client: AsyncMongoClient[Document], settings: ServiceSettings) -> AsyncDatabase[Document]:
    return client[settings.mongo_database]


async def ping(db: AsyncDatabase[Document]) -> bool:
    try:
        await db.command("ping")
    except Exception:
        return False
    return True


DUPLICATE_KEY = 11000


async def insert_new(collection: AsyncCollection[Document], docs: Sequence[Document]) -> set[int]:
    """Insert `docs` unordered; returns the indexes (into `docs`) of those whose `_id` existed already.

    A unique `_id` is how every service claims work and makes a replay harmless, so a duplicate is an
    answer, not an error; any other write error is raised.
    """
    if not docs:
        return set()
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return {int(e["index"]) for e in errors}
    return set()
