"""Loads a TensorBoard log directory with TensorBoard's own EventAccumulator and prints what it saw as
JSON: {"file_version": ..., "scalars": {tag: [[step, value, wall_time], ...]}}. Used by
tensorboard_test.cpp to check that our hand-written event files are read as we meant them."""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main() -> None:
    accumulator = event_accumulator.EventAccumulator(
        sys.argv[1], size_guidance={event_accumulator.SCALARS: 0})  # 0: keep every event
    accumulator.Reload()
    scalars = {
        tag: [[event.step, event.value, event.wall_time] for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
    print(json.dumps({"file_version": accumulator.file_version, "scalars": scalars}))


if __name__ == "__main__":
    main()
