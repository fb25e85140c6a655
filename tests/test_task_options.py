"""Task options that now do what they say: GLUE's buffer_size, SQuAD's verbose_logging."""

import numpy as np
import pytest

import options
from bert_data import squad
from objectives import finetuning


def _first_epoch(n, buffer_size, seed=5):
    cfg = options.parse_options(
        ["--micro-batch-size", "1", "--buffer-size", str(buffer_size)],
        groups=("common", "glue"),
        require_config=False,
    )
    arrays = {"label_ids": np.arange(n, dtype=np.int32)}
    it = iter(finetuning.train_dataset(arrays, cfg, seed))
    return [int(next(it)["label_ids"].numpy().reshape(-1)[0]) for _ in range(n)]


@pytest.mark.parametrize("n, buffer_size", [(10, 4), (12, 4), (9, 100)])
def test_buffer_size_windows_shuffle_each_epoch_into_a_permutation(n, buffer_size):
    order = _first_epoch(n, buffer_size)
    assert sorted(order) == list(range(n))  # every example once per epoch
    window = min(buffer_size, n)
    for start in range(0, n - n % window, window):
        chunk = order[start : start + window]
        # A window of positions holds one window of examples (bounded mixing).
        assert len({x // window for x in chunk}) == 1, (start, chunk)
    if n % window:
        assert sorted(order[-(n % window) :]) == list(range(n - n % window, n))
    assert order != list(range(n))


def test_buffer_size_at_least_the_data_is_a_full_shuffle():
    assert _first_epoch(9, 9) == _first_epoch(9, 10_000)


def test_verbose_logging_reports_unmapped_answers(capsys):
    assert squad.get_final_text("zebra", "Steve Smith's", True, verbose=True) == "Steve Smith's"
    assert "unable to find 'zebra'" in capsys.readouterr().err
    assert squad.get_final_text("steve smith", "Steve Smith's", True, verbose=True) == "Steve Smith"
    assert squad.get_final_text("zebra", "Steve Smith's", True) == "Steve Smith's"
    assert capsys.readouterr().err == ""
