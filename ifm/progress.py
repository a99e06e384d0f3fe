"""A progress bar over optimisation steps (image synthesis, distillation), shown with the running loss."""
from __future__ import annotations


class StepBar:
    """``bar(step, total, loss)`` after every step: a tqdm bar named ``desc``, made at the first step (so nothing is
    drawn, nor tqdm imported, when no step runs); :meth:`close` ends it."""

    def __init__(self, desc: str, unit: str = "step"):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, step: int, total: int, loss: float) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, leave=False)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
