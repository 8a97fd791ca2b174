"""SIGTERM and SIGINT during `fit`: caught, remembered until the next step boundary, handed on.

Preemption (SIGTERM) and Ctrl-C (SIGINT) must not kill a step half way: `SignalCatcher` notes the
first signal and lets `BackupAndRestore` back up at the next step boundary and stop. A second
signal, or one that lands outside `fit`, goes to the handler that was there before.
"""

from __future__ import annotations

import signal
import threading
import warnings
from typing import Any

__all__ = ["SignalCatcher", "announcement", "end_others", "interrupt"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalCatcher:
    """Catches SIGTERM/SIGINT while `model.fit` runs; `pending` holds the first one caught.

    Args:
        model: The model whose `fit` the signals interrupt (a signal landing elsewhere is not
            ours: a `fit` that raised never reached `on_train_end` to uninstall us).
        name: Who catches, for the warning when signals cannot be caught.

    Example:

    >>> import keras, signal
    >>> catcher = SignalCatcher(keras.Sequential(), "BackupAndRestore")
    >>> catcher.install()
    >>> signal.getsignal(signal.SIGTERM) == catcher.handle
    True
    >>> catcher.uninstall()
    >>> catcher.pending is None
    True
    """

    def __init__(self, model: Any, name: str):
        self.model = model
        self.name = name
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Takes SIGTERM and SIGINT over (main thread only; warns elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                f"{self.name}: fit runs outside the main thread, so SIGTERM/SIGINT cannot be "
                "caught; `save_on_interrupt` has no effect.",
                stacklevel=3,
            )
            return
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous != self.handle:
                self._previous[signum] = previous
                signal.signal(signum, self.handle)

    def uninstall(self) -> None:
        """Gives the signals back to the handlers that had them before `install`.

        A signal another handler has taken over since is left to it, and its previous handler
        remembered: that handler may give the signal back to us, and ours must then still know
        where to hand it on (forgetting it made a signal loop through our handler forever).
        """
        for signum, previous in list(self._previous.items()):
            if signal.getsignal(signum) == self.handle:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
                del self._previous[signum]

    def handle(self, signum: int, frame: Any) -> None:
        """The signal handler: notes the first signal inside `fit`; hands on any other."""
        if self.pending is None and _inside_fit(frame, self.model):
            self.pending = signum
            return
        # A second signal (a double Ctrl-C), or one after a `fit` that raised: the handler from
        # before gets it, now.
        previous = self._previous.get(signum, _default(signum))
        self.uninstall()
        if signal.getsignal(signum) == self.handle:  # nothing to give it back to: the default
            signal.signal(signum, previous)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.raise_signal(signum)


def interrupt(signum: int, name: str) -> BaseException:
    """What a script gets once the backup of a signal is committed: Ctrl-C's own exception for
    SIGINT; for SIGTERM an exit with the status a shell reports for it (128 + 15).

    Example:

    >>> import signal
    >>> interrupt(signal.SIGTERM, "BackupAndRestore").code
    143
    """
    if signum == signal.SIGINT:
        return KeyboardInterrupt(f"{name}: backed up and stopped on SIGINT")
    return SystemExit(128 + signum)


def announcement(signum: int, progress: Any, where: str, *, mid_epoch: bool) -> str:
    """The line a stop on a signal prints: which signal, where training stood, where the backup
    is, how to resume.

    Example:

    >>> import signal
    >>> from keras_ckpt.schedule import Progress
    >>> line = announcement(signal.SIGTERM, Progress(1, 3, 13), "runs/b/backup-13", mid_epoch=True)
    >>> line.split("; ")[0]
    'BackupAndRestore: SIGTERM at step 3 of epoch 2 (global step 13)'

    """
    # Keras's 1-based epochs, as its progress bar shows them.
    at = (
        f"at step {progress.step} of epoch {progress.epoch + 1}"
        if mid_epoch
        else f"at the end of epoch {progress.epoch}"
    )
    return (
        f"BackupAndRestore: {signal.Signals(signum).name} {at} (global step "
        f"{progress.global_step}); backed up to {where}. Run the same script again to resume "
        "there."
    )


def end_others(callbacks: list[Any], caller: Any) -> None:
    """A raise from `caller` skips the `on_train_end` of the callbacks of the same `fit`: lets
    keras-ckpt's own (those with `_end_interrupted`) land their saves in flight and give their
    directory locks back."""
    for callback in callbacks:
        end = getattr(callback, "_end_interrupted", None)
        if callback is not caller and callable(end):
            end()


def _default(signum: int) -> Any:
    """The handler Python starts with: Ctrl-C's `KeyboardInterrupt`, else the OS default."""
    return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL


def _inside_fit(frame: Any, model: Any) -> bool:
    """True if `frame` (where a signal landed) is inside `model.fit`: a frame of a method `fit`
    whose `self` is the model. Signals land in the main thread, which runs fit."""
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            return True
        frame = frame.f_back
    return False
