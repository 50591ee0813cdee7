"""Counts the README's "Guarantees" section states, computed from the suite's own parametrization.

`python -m dataset_assets_tests.reliability.counts` prints them (`make reliability` does, after the
tests); the secrets test prints its own scan counts, which depend on the run.
"""
from __future__ import annotations

from dataset_assets_tests.reliability import test_bad_input as bad
from dataset_assets_tests.reliability import test_faults as faults


def fault_counts() -> dict[str, int]:
    return {
        "fault cases": len(faults.FAULTS) + 3,
        "faults injected": sum(fault.injected for fault in faults.FAULTS) + 3,
    }


def bad_input_counts() -> dict[str, int]:
    return {
        "catalog inputs": bad.CATALOG_CASES,
        "version strings": len(bad.ODD_VERSIONS),
        "manifest inputs (plus one cut every 11 bytes)": bad.MANIFEST_ODD_VALUE_FIELDS * len(bad.ODD_VALUES)
        + bad.MANIFEST_NAME_KEYS * len(bad.ODD_NAMES),
        "hostile tar members x readers": len(bad.HOSTILE_MEMBERS) * len(bad.ARCHIVE_READERS),
        "archive bombs": len(bad.BOMBS) + 1,
        "pickled members": len(bad.PICKLE_EXTENSIONS) * len(bad.COMPRESSIONS),
    }


if __name__ == "__main__":
    for name, count in {**fault_counts(), **bad_input_counts()}.items():
        print(f"{name}: {count}")
    print(f"bad inputs (without manifest cuts): {sum(bad_input_counts().values())}")
