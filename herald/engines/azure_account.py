"""The Azure Storage account both Azure engines (``azure-blob``, ``azure-table``) use.

This module owns one thing: where the account's keys come from. An engine's table
(``[storage.azure-blob]`` or ``[storage.azure-table]``) may name them with
``connection_string``; when it does not, the account is the one in the
``AZURE_STORAGE_CONNECTION_STRING`` environment variable, as every Azure tool reads
it (tools outside the project start Herald that way). Neither is a ConfigError that
says both. Nothing here imports the Azure SDK: parsing is the SDK's, on open.

``AZURITE_CONNECTION_STRING`` is Azurite's well-known development account (the
emulator's published key, not a secret) on its default ports, for tests and docs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = [
    "AZURITE_ACCOUNT_KEY",
    "AZURITE_ACCOUNT_NAME",
    "AZURITE_CONNECTION_STRING",
    "CONNECTION_STRING_VARIABLE",
    "AzureAccount",
    "azurite_connection_string",
]

# The variable every Azure SDK and tool reads the account from.
CONNECTION_STRING_VARIABLE = "AZURE_STORAGE_CONNECTION_STRING"

# Azurite's fixed development account ("devstoreaccount1"): published in Azurite's
# README and Microsoft's docs, identical in every installation, so not a secret.
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def azurite_connection_string(host: str = "127.0.0.1", *, blob_port: int = 10000,
                              queue_port: int = 10001, table_port: int = 10002) -> str:
    """The development account's connection string for an Azurite on ``host`` (its
    default ports unless told: a test's Azurite runs on free ones)."""
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={AZURITE_ACCOUNT_NAME};AccountKey={AZURITE_ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{blob_port}/{AZURITE_ACCOUNT_NAME};"
        f"QueueEndpoint=http://{host}:{queue_port}/{AZURITE_ACCOUNT_NAME};"
        f"TableEndpoint=http://{host}:{table_port}/{AZURITE_ACCOUNT_NAME};"
    )


# Azurite on its default ports (``npx azurite``): works out of the box.
AZURITE_CONNECTION_STRING = azurite_connection_string()


def _keys(connection_string: str) -> dict[str, str]:
    """``Key=Value;…`` as a dict with lower-case keys (values keep their ``=``)."""
    keys: dict[str, str] = {}
    for part in connection_string.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(part.split("=", 1)[0][:40])
        keys[key.strip().lower()] = value.strip()
    return keys


@dataclass(frozen=True)
class AzureAccount:
    """The account's keys: a storage connection string (``AccountName=…;AccountKey=…;``
    and endpoints, or a SAS). Kept out of ``repr`` (it holds the key)."""

    connection_string: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.connection_string.strip():
            raise ConfigError("the Azure Storage connection string is empty")
        try:
            keys = _keys(self.connection_string)
        except ValueError as exc:
            raise ConfigError("the Azure Storage connection string is not "
                              f"'Key=Value;…' (at {str(exc)!r})") from None
        if not ({"accountname", "blobendpoint", "tableendpoint"} & keys.keys()
                or keys.get("usedevelopmentstorage", "").lower() == "true"):
            raise ConfigError("the Azure Storage connection string names no account "
                              "(AccountName=…) and no endpoint (BlobEndpoint=…, "
                              "TableEndpoint=…)")

    @classmethod
    def resolve(cls, connection_string: str | None, label: str,
                environ: Mapping[str, str] | None = None) -> AzureAccount:
        """The account from the engine's table (``label``: ``[storage.azure-table]``),
        else from ``AZURE_STORAGE_CONNECTION_STRING``; a ConfigError naming both when
        neither is set."""
        if connection_string:
            try:
                return cls(connection_string)
            except ConfigError as exc:
                raise ConfigError(f"{label} connection_string: {exc.message}") from None
        env = os.environ if environ is None else environ
        value = env.get(CONNECTION_STRING_VARIABLE)
        if value:
            try:
                return cls(value)
            except ConfigError as exc:
                raise ConfigError(f"{CONNECTION_STRING_VARIABLE}: {exc.message}") from None
        raise ConfigError(
            f"{label} connection_string: required (or set {CONNECTION_STRING_VARIABLE}, "
            f"as for every Azure tool; docs/configuration.md has Azurite's)")

    @property
    def account_name(self) -> str | None:
        """The account's name, for logs and the start-up banner (never the key)."""
        keys = _keys(self.connection_string)
        if keys.get("usedevelopmentstorage", "").lower() == "true":
            return AZURITE_ACCOUNT_NAME
        return keys.get("accountname")

    def endpoint(self, service: str) -> str | None:
        """The ``BlobEndpoint`` / ``TableEndpoint`` named in the string, if any
        (``service``: "blob", "table")."""
        return _keys(self.connection_string).get(f"{service.lower()}endpoint")
