#!/usr/bin/env python3
"""Validate CloudEvents (one JSON object per line of --events) against a JSON schema with
jsonschema; print each event's errors, and exit 1 if any event is invalid."""
import argparse
import json
import sys

import jsonschema


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--events", required=True, help="a file of JSON events, one per line")
    args = parser.parse_args()
    with open(args.schema) as file:
        schema = json.load(file)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    invalid = 0
    count = 0
    with open(args.events) as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            count += 1
            errors = sorted(validator.iter_errors(json.loads(line)), key=lambda error: list(error.path))
            if errors:
                invalid += 1
                for error in errors:
                    print("event %d: %s: %s" % (number, "/".join(str(part) for part in error.path) or "(event)", error.message))
    print("%d events, %d invalid" % (count, invalid))
    sys.exit(1 if invalid else 0)


if __name__ == "__main__":
    main()
