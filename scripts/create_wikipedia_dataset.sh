#!/usr/bin/env bash
# English Wikipedia -> BERT pretraining TFRecords, end to end, resumable.
#
#   bash scripts/create_wikipedia_dataset.sh            # everything, from the dump download
#   SKIP_DOWNLOAD=1 EXTRACTED=my/extracted bash scripts/create_wikipedia_dataset.sh
#
# Stages (each one is skipped when its output is already complete, so an interrupted run can
# simply be started again):
#   1. download  the pinned enwiki dump ($DUMP_DATE) and check its md5 (needs internet)
#   2. extract   it with WikiExtractor into $EXTRACTED (AA/wiki_00 ...): pip install wikiextractor
#   3. clean     python3 -m bert_data.wiki_preprocess: one sentence per line, blank line between
#                documents, headings dropped -> $CLEANED/AA/wiki_00_cleaned ...
#   4. vocab     check $VOCAB has [PAD] [UNK] [CLS] [SEP] [MASK]; if VOCAB is empty, train one
#                with python3 -m bert_data.create_vocab into $OUT_DIR/vocab.txt
#   5. records   bert_data/create_pretraining_data.py once per "seq:masks" pair in $SEQ_MASKS,
#                sharded into $NUM_SHARDS files: $OUT_DIR/tokenised_128_dup5_mask20/wiki_000.tfrecord
#
# Every setting below can be overridden from the environment. The phase-2 masks are 56 (the
# reference README's number; its script said 58): configs must use max_predictions_per_seq 56.
# Disk: the dump is ~22 GB, extracted and cleaned text ~20 GB each, the records ~300 GB.
# SKIP_DOWNLOAD=1 skips stages 1-2 and uses the WikiExtractor output already in $EXTRACTED.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# --- settings -------------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
DATA_DIR="${DATA_DIR:-data}"
# A dump date listed at https://dumps.wikimedia.org/enwiki/ (only the last few are kept there;
# older ones are on mirrors: set DUMP_URL_BASE). Pinned so that two runs use the same text.
DUMP_DATE="${DUMP_DATE:-20260601}"
DUMP_URL_BASE="${DUMP_URL_BASE:-https://dumps.wikimedia.org/enwiki/${DUMP_DATE}}"
DUMP_NAME="enwiki-${DUMP_DATE}-pages-articles.xml.bz2"
DUMP="${DUMP:-${DATA_DIR}/${DUMP_NAME}}"
EXTRACTED="${EXTRACTED:-${DATA_DIR}/wikipedia_extracted}"
CLEANED="${CLEANED:-${DATA_DIR}/wikipedia_cleaned}"
OUT_DIR="${OUT_DIR:-${DATA_DIR}/tf_wikipedia}"
VOCAB="${VOCAB:-}"                 # empty: train one (stage 4)
VOCAB_SIZE="${VOCAB_SIZE:-30522}"  # only used when training a vocab
DO_LOWER_CASE="${DO_LOWER_CASE:-1}"
NUM_WORKERS="${NUM_WORKERS:-$(nproc 2>/dev/null || echo 4)}"
NUM_SHARDS="${NUM_SHARDS:-256}"
DUPLICATION="${DUPLICATION:-5}"
SEQ_MASKS="${SEQ_MASKS:-128:20 384:56}"
REMASK="${REMASK:-1}"              # 1: static-mask layout (configs with "static_mask": true)
SKIP_DOWNLOAD="${SKIP_DOWNLOAD:-0}"
WIKIEXTRACTOR_ARGS="${WIKIEXTRACTOR_ARGS:--b 100M}"
# ----------------------------------------------------------------------------------------------

export PYTHONPATH="${REPO_DIR}${PYTHONPATH:+:${PYTHONPATH}}"
LOWER_FLAG=()
if [[ "${DO_LOWER_CASE}" == 1 ]]; then LOWER_FLAG=(--do-lower-case); fi

say() { echo "== $*"; }
die() { echo "error: $*" >&2; exit 1; }

download() {  # url destination: resumable, atomic (destination.part, then rename)
    if command -v wget >/dev/null; then
        wget --continue --tries=5 -O "$2.part" "$1" || return 1
    elif command -v curl >/dev/null; then
        curl --fail --location --retry 5 --continue-at - -o "$2.part" "$1" || return 1
    else
        die "neither wget nor curl is installed; install one, or download $1 to $2 yourself"
    fi
    mv "$2.part" "$2"
}

# --- 1. download ------------------------------------------------------------------------------
if [[ "${SKIP_DOWNLOAD}" == 1 ]]; then
    say "[1-2] SKIP_DOWNLOAD=1: using the WikiExtractor output in ${EXTRACTED}"
    [[ -d "${EXTRACTED}" ]] || die "EXTRACTED=${EXTRACTED} does not exist"
else
    if [[ -f "${DUMP}" ]]; then
        say "[1] ${DUMP} exists, skipping the download"
    else
        mkdir -p "$(dirname "${DUMP}")"
        say "[1] downloading ${DUMP_URL_BASE}/${DUMP_NAME}"
        download "${DUMP_URL_BASE}/${DUMP_NAME}" "${DUMP}" \
            || die "download of ${DUMP_URL_BASE}/${DUMP_NAME} failed; dumps.wikimedia.org keeps" \
                   "only recent dates: pick one from https://dumps.wikimedia.org/enwiki/ and rerun" \
                   "with DUMP_DATE=YYYYMMDD (or point DUMP_URL_BASE at a mirror)"
        sums="${DATA_DIR}/enwiki-${DUMP_DATE}-md5sums.txt"
        if download "${DUMP_URL_BASE}/enwiki-${DUMP_DATE}-md5sums.txt" "${sums}"; then
            expected="$(awk -v f="${DUMP_NAME}" '$2 == f {print $1}' "${sums}")"
            actual="$(md5sum "${DUMP}" | awk '{print $1}')"
            if [[ -z "${expected}" ]]; then
                echo "warning: ${sums} lists no ${DUMP_NAME}; md5 not checked" >&2
            elif [[ "${expected}" != "${actual}" ]]; then
                mv "${DUMP}" "${DUMP}.bad"
                die "md5 of ${DUMP} is ${actual}, expected ${expected}; moved to ${DUMP}.bad, rerun"
            else
                say "[1] md5 ${actual} matches ${sums}"
            fi
        else
            echo "warning: no md5sums file at ${DUMP_URL_BASE}; the dump is not verified" >&2
        fi
    fi

# --- 2. extract -------------------------------------------------------------------------------
    if [[ -f "${EXTRACTED}/.complete" ]]; then
        say "[2] ${EXTRACTED} is complete, skipping WikiExtractor"
    else
        "${PYTHON}" -c "import wikiextractor" 2>/dev/null \
            || die "WikiExtractor is missing: pip install wikiextractor"
        say "[2] extracting ${DUMP} into ${EXTRACTED}"
        mkdir -p "${EXTRACTED}"
        # shellcheck disable=SC2086  # WIKIEXTRACTOR_ARGS holds several words on purpose.
        "${PYTHON}" -m wikiextractor.WikiExtractor ${WIKIEXTRACTOR_ARGS} \
            --processes "${NUM_WORKERS}" -o "${EXTRACTED}" "${DUMP}"
        touch "${EXTRACTED}/.complete"
    fi
fi

# --- 3. clean ---------------------------------------------------------------------------------
if [[ -f "${CLEANED}/.complete" ]]; then
    say "[3] ${CLEANED} is complete, skipping wiki_preprocess"
else
    say "[3] splitting sentences: ${EXTRACTED} -> ${CLEANED}"
    "${PYTHON}" -m bert_data.wiki_preprocess --input-file "${EXTRACTED}" \
        --output-file "${CLEANED}" --num-workers "${NUM_WORKERS}" --skip-existing
    touch "${CLEANED}/.complete"
fi
CLEANED_FILES="$(find "${CLEANED}" -type f -name '*_cleaned' | LC_ALL=C sort | paste -sd, -)"
[[ -n "${CLEANED_FILES}" ]] || die "no *_cleaned files in ${CLEANED}"

# --- 4. vocab ---------------------------------------------------------------------------------
if [[ -z "${VOCAB}" ]]; then
    VOCAB="${OUT_DIR}/vocab.txt"
    if [[ -f "${VOCAB}" ]]; then
        say "[4] ${VOCAB} exists, not retraining it"
    else
        say "[4] training a ${VOCAB_SIZE}-token WordPiece vocab: ${VOCAB}"
        "${PYTHON}" -m bert_data.create_vocab --input-file "${CLEANED_FILES}" \
            --output-file "${VOCAB}" --vocab-size "${VOCAB_SIZE}" "${LOWER_FLAG[@]}"
    fi
fi
[[ -f "${VOCAB}" ]] || die "VOCAB=${VOCAB} does not exist"
for token in '[PAD]' '[UNK]' '[CLS]' '[SEP]' '[MASK]'; do
    grep -qxF -- "${token}" "${VOCAB}" \
        || die "VOCAB=${VOCAB} has no ${token} line; use a BERT vocab or unset VOCAB to train one"
done
say "[4] vocab ${VOCAB}: $(wc -l < "${VOCAB}") tokens, special tokens present"

# --- 5. records -------------------------------------------------------------------------------
REMASK_FLAG=()
if [[ "${REMASK}" == 1 ]]; then REMASK_FLAG=(--remask); fi
for pair in ${SEQ_MASKS}; do
    seq="${pair%%:*}"
    masks="${pair##*:}"
    dir="${OUT_DIR}/tokenised_${seq}_dup${DUPLICATION}_mask${masks}"
    if [[ -f "${dir}/.complete" ]]; then
        say "[5] ${dir} is complete, skipping"
        continue
    fi
    mkdir -p "${dir}"
    width=$(( ${#NUM_SHARDS} > 3 ? ${#NUM_SHARDS} : 3 ))
    outputs=""
    for (( i = 0; i < NUM_SHARDS; i++ )); do
        outputs+="${outputs:+,}$(printf "%s/wiki_%0${width}d.tfrecord" "${dir}" "${i}")"
    done
    say "[5] seq ${seq}, ${masks} masks, duplication ${DUPLICATION} -> ${NUM_SHARDS} shards in ${dir}"
    "${PYTHON}" "${REPO_DIR}/bert_data/create_pretraining_data.py" \
        --input-file "${CLEANED_FILES}" --output-file "${outputs}" --vocab-file "${VOCAB}" \
        "${LOWER_FLAG[@]}" --sequence-length "${seq}" --mask-tokens "${masks}" \
        --duplication-factor "${DUPLICATION}" "${REMASK_FLAG[@]}" --num-workers "${NUM_WORKERS}"
    {
        echo "dump: ${DUMP_NAME} (SKIP_DOWNLOAD=${SKIP_DOWNLOAD})"
        echo "vocab: ${VOCAB} md5 $(md5sum "${VOCAB}" | awk '{print $1}')"
        echo "do_lower_case: ${DO_LOWER_CASE}  seq_length: ${seq}  max_predictions_per_seq: ${masks}"
        echo "duplicate_factor: ${DUPLICATION}  static_mask (remask): ${REMASK}  shards: ${NUM_SHARDS}"
    } > "${dir}/manifest.txt"
    touch "${dir}/.complete"
done
say "done: records in ${OUT_DIR}"
