"""Progress off a terminal: a few whole lines, never tqdm's carriage-return redraws."""
import io

from llpf import progress as P


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_a_line_at_each_quarter_and_none_redrawn():
    out, clock = io.StringIO(), Clock()
    bar = P.PlainProgress(total=300, desc="M2M", stream=out, clock=clock)
    for i in range(300):
        clock.t += 0.1
        bar.set_postfix(loss=f"{i / 1000:.4f}")
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["M2M: 75/300 (25%)", "M2M: 150/300 (50%)", "M2M: 225/300 (75%)",
                                                   "M2M: 300/300 (100%)"]
    assert "\r" not in out.getvalue() and "loss=0.2990" in lines[-1] and "0:00:30 elapsed" in lines[-1]
    assert "~0:00:22 left" in lines[0]  # 225 steps to go at 0.1 s each


def test_a_long_quarter_still_writes_a_line_every_few_minutes():
    out, clock = io.StringIO(), Clock()
    bar = P.PlainProgress(total=100, initial=10, desc="train", stream=out, clock=clock)
    for _ in range(10):
        clock.t += P.PLAIN_EVERY_S / 2
        bar.update()
    assert [ln.split(",")[0] for ln in out.getvalue().splitlines()] == \
        ["train: 12/100 (12%)", "train: 14/100 (14%)", "train: 16/100 (16%)", "train: 18/100 (18%)",
         "train: 20/100 (20%)"]


def test_work_stopped_early_ends_with_the_line_where_it_stopped_and_iteration_works():
    out = io.StringIO()
    assert list(P.progress_bar(range(3), desc="moves", stream=out)) == [0, 1, 2]
    with P.progress_bar(total=10, desc="autoneb", stream=out) as bar:
        bar.update(3)
    assert [ln.split(",")[0] for ln in out.getvalue().splitlines()] == \
        ["moves: 1/3 (33%)", "moves: 2/3 (67%)", "moves: 3/3 (100%)", "autoneb: 3/10 (30%)"]


def test_a_terminal_gets_tqdm_s_bar_and_disabled_progress_writes_nothing():
    tty, log = Terminal(), io.StringIO()
    with P.progress_bar(total=5, desc="bar", stream=tty) as bar:
        bar.update(5)
    assert "\r" in tty.getvalue()
    assert not isinstance(P.progress_bar(total=5, stream=tty), P.PlainProgress)
    assert isinstance(P.progress_bar(total=5, stream=log), P.PlainProgress)
    with P.progress_bar(total=5, desc="quiet", stream=log, enabled=False) as bar:
        bar.update(5)
    assert log.getvalue() == ""
