"""The reference's evaluation scripts (its `tasks/` folder): `evaluate_wiki.py` (WikiText
perplexity), `evaluate_lambada.py` (LAMBADA accuracy) and `run_evaluate.sh wiki|lmbd`. Run them from
the repository root as `python3 tasks/evaluate_wiki.py ...`; `evaluate_common` holds what they share."""
