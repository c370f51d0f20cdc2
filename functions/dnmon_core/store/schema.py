"""The table's keys and indexes, for ``create_table`` (the local stack, tests).

infra/template.yaml declares the same; a test checks that the two agree.
"""

from __future__ import annotations

from typing import Any

_INDEXES = ("gsi1", "gsi2")


def table_schema() -> dict[str, Any]:
    keys = ["pk", "sk", *(f"{index}{part}" for index in _INDEXES for part in ("pk", "sk"))]
    return {
        "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name in keys],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": f"{index}pk", "KeyType": "HASH"},
                    {"AttributeName": f"{index}sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index in _INDEXES
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
