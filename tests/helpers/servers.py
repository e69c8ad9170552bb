"""Throwaway servers the fixtures start on 127.0.0.1 (PostgreSQL, Azurite), as tests address
them."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass

from resources.lake import EMULATOR_ACCOUNT, EMULATOR_KEY

PG_DRIVER = "PostgreSQL Unicode"
PG_PASSWORD = "s3cr3t-Pa55;word"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class PostgresServer:
    port: int
    user: str
    password: str

    def connection_string(self, database: str, password: str | None = None) -> str:
        pwd = self.password if password is None else password
        return (
            f"Driver={{{PG_DRIVER}}};Server=127.0.0.1;Port={self.port};Database={database};"
            f"Uid={self.user};Pwd={{{pwd}}}"
        )


@dataclass(frozen=True)
class Azurite:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={EMULATOR_ACCOUNT};"
            f"AccountKey={EMULATOR_KEY};BlobEndpoint={self.url}/{EMULATOR_ACCOUNT};"
        )

    def create_container(self) -> str:
        """A new, empty container (Azurite, like a storage account, needs it created first)."""
        from azure.storage.blob import BlobServiceClient

        name = f"lake-{uuid.uuid4().hex[:12]}"
        with BlobServiceClient.from_connection_string(self.connection_string) as service:
            service.create_container(name)
        return name
