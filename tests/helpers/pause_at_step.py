"""Runs a Trainer stage (sft or rm) that, at the end of step N, writes a file and waits for SIGTERM (or SIGINT,
whose KeyboardInterrupt ends the wait).

    python tests/helpers/pause_at_step.py <stage> <step> <ready_file> <stage arguments...>

The test sends the signal once the file exists: the signal then arrives during training at a known step,
whatever the machine's speed, and the stage's own handling of it is what the test sees.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def main(stage: str, step: int, ready_file: str, argv: list[str]) -> None:
    # Ctrl-C as a terminal delivers it, even to a suite started in the background, where SIGINT comes in ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from transformers import TrainerCallback

    from rlhf.stages import rm, sft, trainer_run

    class PauseForSigterm(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step != step:
                return
            stop_request = signal.getsignal(signal.SIGTERM).__self__  # the stage's handler, a StopRequest's
            Path(ready_file).write_text(str(step))
            while not stop_request.requested:  # waits for the event, not for a time
                time.sleep(0.01)

    train = trainer_run.train

    def train_with_pause(trainer, config):
        # Added before the stage's own callback, so the signal is in when that one checks at this step.
        trainer.add_callback(PauseForSigterm())
        return train(trainer, config)

    trainer_run.train = train_with_pause
    {"sft": sft.main, "rm": rm.main}[stage](argv)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:])
