"""MongoDB access through PyMongo's async API (`AsyncMongoClient`; motor is deprecated).

Locally the server is FerretDB v1, so we keep to what it supports: CRUD, upserts keyed by natural ids,
unique indexes, `$set/$inc/$max/$addToSet/$pull`, and simple aggregations — no transactions, change
streams, TTL indexes or `$lookup`. FerretDB v1.24 also mis-computes a `$group` with more than one
accumulator (only the first one sees documents): use one accumulator per `$group`.
"""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

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
