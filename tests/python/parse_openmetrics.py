#!/usr/bin/env python3
"""Parse OpenMetrics text from stdin with prometheus_client's strict parser and print it as JSON.

This is a real, independent peer for Spindle's exposition tests: prometheus_client's
`openmetrics.parser` validates the `# EOF` terminator, metric family metadata, sample names
and exemplar syntax. On success it prints one JSON document:

    {"families": [{"name", "type", "unit", "help",
                   "samples": [{"name", "labels", "value", "timestamp",
                                "exemplar": {"labels", "value", "timestamp"} | null}]}]}

On a parse error it prints the parser's message to stderr and exits 1.
"""

import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def _num(value):
    """Return a JSON-safe number: NaN and infinities become strings."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return value


def _ts(timestamp):
    """Convert a prometheus_client timestamp (float, Timestamp or None) to float seconds."""
    if timestamp is None:
        return None
    if hasattr(timestamp, "sec"):
        return timestamp.sec + timestamp.nsec / 1e9
    return float(timestamp)


def main() -> int:
    text = sys.stdin.read()
    try:
        families = []
        for family in text_string_to_metric_families(text):
            samples = []
            for sample in family.samples:
                exemplar = None
                if sample.exemplar is not None:
                    exemplar = {
                        "labels": dict(sample.exemplar.labels),
                        "value": _num(sample.exemplar.value),
                        "timestamp": _ts(sample.exemplar.timestamp),
                    }
                samples.append(
                    {
                        "name": sample.name,
                        "labels": dict(sample.labels),
                        "value": _num(sample.value),
                        "timestamp": _ts(sample.timestamp),
                        "exemplar": exemplar,
                    }
                )
            families.append(
                {
                    "name": family.name,
                    "type": family.type,
                    "unit": family.unit,
                    "help": family.documentation,
                    "samples": samples,
                }
            )
    except Exception as err:  # the parser raises ValueError (and others) with a useful message
        print(f"openmetrics parse error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    json.dump({"families": families}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
