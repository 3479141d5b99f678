"""Helpers shared by the trainer's end-to-end tests."""
import json
import os


def without_times(metrics):
    """The metrics minus wall-clock fields, which no two runs share."""
    return {**metrics, "wall_time_s": None,
            "epochs": [{k: v for k, v in r.items() if k != "time_s"} for r in metrics["epochs"]]}


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(out):
    return read_json(os.path.join(out, "metrics.json"))
