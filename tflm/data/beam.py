"""Preparing a token store with Apache Beam: `python -m tflm.prepare ... --beam-options="..."`.

The same store as one process writes (tflm.data.prepare), token for token, from the same pieces
(tflm.data.chunks), with the work spread over a Beam runner's workers:

  1. the launching process learns the tokenizer from a sample of the training split, as one process
     does, and saves it in the store (char learns from every character: step 3);
  2. the workers count each chunk's lines, so every chunk knows the index of its first line in its
     file (which decides the train/validation split);
  3. char only: the workers count the characters of each chunk's training text, added up into the
     vocabulary (CharTokenizer.from_counts), the one learning a single process would do;
  4. the workers tokenize each chunk with the tokenizer (loaded once per worker) and write its
     shards under temporary names, reporting what they wrote;
  5. the launching process renames the shards to their numbers in chunk order and writes
     index.json last, so a store is whole or absent; a failed pipeline removes what it wrote.

Runners: `--runner=DirectRunner` (the default) runs Beam's FnApiRunner over this machine's cores
(`--direct_running_mode=multi_processing --direct_num_workers=<cores>` unless given). tflm starts
it directly: Beam's own DirectRunner first tries its Prism runner, which downloads a binary from
the network at first use. Other runners (DataflowRunner, FlinkRunner, SparkRunner) run on other
machines, so the sources and the store must be URLs those machines can reach (gs://, hdfs://, ...).
"""

import contextlib
import io
import json
import logging
import os
import re
import shlex

APITOOLS_WARNING = "apitools not found, and bigquery client libraries are not available"
logging.getLogger().addFilter(lambda record: APITOOLS_WARNING not in record.getMessage())  # Beam's, at import

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions  # noqa: E402

from tflm import atomic  # noqa: E402
from tflm.atomic import is_local  # noqa: E402
from tflm.data.chunks import CHUNK_BYTES, InvalidUtf8, count_lines, read_chunk  # noqa: E402
from tflm.data.prepare import assemble_splits, learn_logged, staged, store_index, write_piece  # noqa: E402
from tflm.data.sources import file_chunks_of, make_source  # noqa: E402
from tflm.data.store import TokenStore, id_dtype, write_index, writing  # noqa: E402
from tflm.data.tokenizers import load_tokenizer  # noqa: E402
from tflm.data.tokenizers.char import CharTokenizer, count_characters  # noqa: E402
from tflm.errors import TflmError  # noqa: E402
from tflm.lazy import tf  # noqa: E402
from tflm.quiet import VERBOSE_ENV  # noqa: E402

DIRECT_RUNNERS = ("directrunner", "direct", "switchingdirectrunner")
REPORTS = ".beam"  # the workers' reports, in the store while it is written
TOKENIZER_DIR = "tokenizer"


def beam_pipeline_options(text):
    """(PipelineOptions, runner name) of --beam-options; an option Beam does not know, or a value it
    rejects, is a TflmError naming it. The direct runner gets multi-processing over this machine's
    cores and quiet workers unless the options say otherwise."""
    try:
        flags = shlex.split(text)
    except ValueError as error:
        raise TflmError(f"--beam-options: {error}") from None
    runner = check_options(flags).get("runner") or "DirectRunner"
    if is_direct(runner):
        given = {flag.split("=")[0] for flag in flags}
        defaults = {"--direct_running_mode": "multi_processing", "--direct_num_workers": str(os.cpu_count() or 1),
                    "--default_sdk_harness_log_level": "INFO" if verbose() else "CRITICAL"}
        flags += [f"{flag}={value}" for flag, value in defaults.items() if flag not in given]
    return PipelineOptions(flags), runner


def is_direct(runner):
    """Whether a runner name is Beam's direct runner (run here by FnApiRunner, never Prism)."""
    return runner.lower() in DIRECT_RUNNERS


def verbose():
    """Whether the command was asked to show every log line (tflm.quiet)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def check_options(flags):
    """Beam's parsed options of `flags`; a TflmError for an unknown option or a rejected value."""
    options, errors = PipelineOptions(flags), io.StringIO()
    quiet = logging.getLogger("apache_beam.options.pipeline_options")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # Beam warns of unknown options and goes on: here they are errors
    try:
        with contextlib.redirect_stderr(errors):
            known = options.get_all_options()
            unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
    except SystemExit:  # argparse's way of rejecting a value, after printing the usage
        reason = errors.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        raise TflmError(f"--beam-options: {reason}") from None
    finally:
        quiet.setLevel(level)
    if unknown:
        raise TflmError(f"--beam-options: Apache Beam has no option --{unknown[0]}")
    return known


def make_runner(name, options):
    """The runner to run tflm's pipeline on: Beam's FnApiRunner for the direct runner (never Prism),
    else the one Beam creates for `name` (a TflmError if it cannot)."""
    if is_direct(name):
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        # What Beam's DirectRunner does once it falls back from Prism: the workers get the options.
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return fn_runner.FnApiRunner(provision_info=provision)
    from apache_beam.runners.runner import create_runner

    try:
        return create_runner(name)
    except (ImportError, ValueError) as error:
        raise TflmError(f"--beam-options: runner {name}: {first_line(str(error))}") from None


def check_reachable(runner, paths, store):
    """A runner off this machine cannot read local files or write a local store: a TflmError."""
    if is_direct(runner):
        return
    for path in [*paths, store]:
        if is_local(path):
            raise TflmError(f"--beam-options: {runner}'s workers run on other machines and cannot reach {path} "
                            "on this one; give the sources and --store as URLs they share (gs://...)")


def write_store_with_beam(data_config, path, beam_options, log, chunk_bytes=CHUNK_BYTES):
    """tflm.data.prepare.write_store's work, spread over a Beam runner's workers (module doc)."""
    options, runner_name = beam_pipeline_options(beam_options)
    source = make_source(data_config)
    chunks = text_file_chunks(source, chunk_bytes)
    runner = make_runner(runner_name, options)
    check_reachable(runner_name, [chunk.path for chunk in chunks], path)
    if data_config.tokenizer == "char":  # learned by the workers: its size is checked before they start
        CharTokenizer.check_vocab_size(data_config.vocab_size)
        tokenizer = None
    else:
        tokenizer = learn_logged(data_config, source, log)
    workers = options.view_as(DirectOptions).direct_num_workers if is_direct(runner_name) else None
    log(f"tflm.prepare: {len(chunks)} chunks on Apache Beam's {runner_name}"
        + (f" with {workers} workers" if workers else ""))
    with staged(path) as target:
        if tokenizer is not None:
            save_tokenizer(tokenizer, target)
        run_pipeline(runner, options, chunks, target, data_config)
        tokenizer = tokenizer or counted_char_tokenizer(target, data_config.vocab_size)
        pieces = pieces_in_order(read_json(target, "written.json"), len(chunks), tokenizer)
        with writing(target, REPORTS):
            tf.io.gfile.rmtree(os.path.join(target, REPORTS))
        prepared = {"by": "Apache Beam", "beam": beam.__version__, "runner": runner_name, "workers": workers,
                    "chunk_bytes": chunk_bytes}
        write_index(target, store_index(id_dtype(tokenizer.vocabulary_size), tokenizer, data_config, source,
                                        assemble_splits(target, pieces), prepared))
    return TokenStore.open(path)


def text_file_chunks(source, chunk_bytes):
    """The source's chunks; a TflmError for a source that is not text files."""
    chunks = file_chunks_of(source, chunk_bytes)
    if chunks is None:
        raise TflmError("--beam-options prepares text files only (data.source: files, with data.validation_paths "
                        "files if any); the default corpus is small, and TFDS datasets are built with tfds build "
                        "--beam_pipeline_options")
    return chunks


def counted_char_tokenizer(target, vocab_size):
    """The char tokenizer of the characters the workers counted, saved in the store; a TflmError
    naming the first chunk that was not UTF-8."""
    characters = read_json(target, "characters.json")
    problem = first_error(characters["errors"])
    if problem:
        raise TflmError(f"{problem}; nothing was written")
    tokenizer = CharTokenizer.from_counts(characters["counts"], vocab_size)
    save_tokenizer(tokenizer, target)
    return tokenizer


def save_tokenizer(tokenizer, target):
    """The tokenizer into the store, where the workers load it from."""
    with writing(target, TOKENIZER_DIR):
        tokenizer.save(os.path.join(target, TOKENIZER_DIR))


def run_pipeline(runner, options, chunks, target, data_config):
    """Count lines (and, for char, characters), then tokenize and write every chunk; a TflmError
    naming the first failure if the pipeline fails."""
    reports = os.path.join(target, REPORTS)
    char = data_config.tokenizer == "char"
    try:
        with beam_logs_quiet(), beam.Pipeline(runner=runner, options=options) as pipeline:
            numbered = pipeline | "Chunks" >> beam.Create(list(enumerate(chunks)))
            first_lines = beam.pvalue.AsSingleton(
                numbered | "CountLines" >> beam.MapTuple(lambda number, chunk: (number, count_lines(chunk)))
                | "AllLineCounts" >> beam.combiners.ToDict() | "FirstLines" >> beam.Map(first_lines_of, chunks))
            side_inputs = [first_lines]
            if char:
                counts = (numbered | "CountCharacters" >> beam.ParDo(CountTrainingCharacters(), first_lines)
                          | "AddCounts" >> beam.CombineGlobally(add_counts))
                _ = counts | "SaveCounts" >> beam.Map(save_json, os.path.join(reports, "characters.json"))
                side_inputs.append(beam.pvalue.AsSingleton(counts))
            written = numbered | "Tokenize" >> beam.ParDo(
                TokenizeChunk(target, data_config.vocab_size if char else None), *side_inputs)
            _ = (written | "AllWritten" >> beam.combiners.ToList()
                 | "SaveWritten" >> beam.Map(save_json, os.path.join(reports, "written.json")))
    except TflmError:
        raise
    except Exception as error:  # a worker's failure, wrapped by the runner with its traceback
        raise TflmError(f"the Beam pipeline failed: {worker_error(error)}; nothing was written") from None


@contextlib.contextmanager
def beam_logs_quiet():
    """Beam's log lines hidden while the pipeline runs (unless verbose): the runner's relay of what
    the workers print themselves, and a failing worker's traceback, logged again by the runner (the
    failure is one line: the exception the pipeline raises)."""
    logger = logging.getLogger("apache_beam")
    level = logger.level
    if not verbose():
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def first_lines_of(line_counts, chunks):
    """[index of each chunk's first line in its file] from {chunk number: lines starting in it}."""
    first, line = [], 0
    for number, chunk in enumerate(chunks):
        line = 0 if chunk.start == 0 else line
        first.append(line)
        line += line_counts[number]
    return first


class CountTrainingCharacters(beam.DoFn):
    """{"counts": {character: count}} of a chunk's training text, or {"errors": {chunk: message}}
    if it is not UTF-8 (a bad input is reported, not retried as a worker failure would be)."""

    def process(self, numbered, first_lines):
        """Count one (chunk number, chunk), whose first line is first_lines[number] of its file."""
        number, chunk = numbered
        try:
            yield {"counts": count_characters(read_chunk(chunk, first_lines[number]).blocks["train"]), "errors": {}}
        except InvalidUtf8 as error:
            yield {"counts": {}, "errors": {number: str(error)}}


def add_counts(parts):
    """The sum of CountTrainingCharacters' counts, and every error."""
    total = {"counts": {}, "errors": {}}
    for part in parts:
        for char, count in part["counts"].items():
            total["counts"][char] = total["counts"].get(char, 0) + count
        total["errors"].update(part["errors"])
    return total


class TokenizeChunk(beam.DoFn):
    """Tokenizes a chunk into shards named after it; yields what it wrote, or the error that
    stopped it (invalid UTF-8, a store it cannot write). The tokenizer is the store's (loaded once
    per worker), or for char built from the added-up counts."""

    def __init__(self, target, char_vocab_size):
        self.target, self.char_vocab_size = target, char_vocab_size
        self.tokenizer = None

    def setup(self):
        """Load the store's tokenizer, once per worker (char builds its own from the counts)."""
        if self.char_vocab_size is None:
            self.tokenizer = load_tokenizer(os.path.join(self.target, TOKENIZER_DIR))
            self.fingerprint = self.tokenizer.fingerprint()

    def process(self, numbered, first_lines, characters=None):
        """Tokenize one (chunk number, chunk); `characters`: add_counts' total, for char."""
        number, chunk = numbered
        if characters is not None and (characters["errors"] or not characters["counts"]):
            return  # the launching process reports it
        if self.tokenizer is None:
            self.tokenizer = CharTokenizer.from_counts(characters["counts"], self.char_vocab_size)
            self.fingerprint = self.tokenizer.fingerprint()
        try:
            text = read_chunk(chunk, first_lines[number])
            written = write_piece(self.target, id_dtype(self.tokenizer.vocabulary_size), self.tokenizer, text.blocks,
                                  lambda split, shard: f"{split}/.chunk-{number:06d}-{shard:03d}.bin")
        except TflmError as error:  # StoreWriteError included
            yield {"chunk": number, "error": str(error)}
            return
        yield {"chunk": number, "written": written, "tokenizer": self.fingerprint}


def save_json(value, path):
    """Write `value` as JSON at `path` (atomically locally, one object elsewhere)."""
    with writing(os.path.dirname(path), os.path.basename(path)):
        atomic.makedirs(os.path.dirname(path))
        atomic.write_bytes(path, json.dumps(value, ensure_ascii=False).encode("utf-8"))


def read_json(target, name):
    """A report the pipeline saved; a TflmError if it did not."""
    path = os.path.join(target, REPORTS, name)
    if not atomic.exists(path):
        raise TflmError(f"the Beam pipeline finished without writing {name}; nothing was written")
    return json.loads(atomic.read_bytes(path).decode("utf-8"))


def first_error(errors):
    """The message of the lowest-numbered chunk's error, from {chunk: message}; None if none."""
    return errors[min(errors, key=int)] if errors else None


def pieces_in_order(reports, chunks, tokenizer):
    """What each chunk wrote, in chunk order; a TflmError if a chunk is missing or was tokenized
    with another tokenizer than the store's."""
    problem = first_error({report["chunk"]: report["error"] for report in reports if "error" in report})
    if problem:
        raise TflmError(f"{problem}; nothing was written")
    by_chunk = {report["chunk"]: report for report in reports}
    missing = [number for number in range(chunks) if number not in by_chunk]
    if missing:
        raise TflmError(f"the Beam pipeline reported no shards for chunk {missing[0]} (of {chunks})")
    fingerprint = tokenizer.fingerprint()
    for report in by_chunk.values():
        if report["tokenizer"] != fingerprint:
            raise TflmError(f"a Beam worker tokenized chunk {report['chunk']} with another tokenizer "
                            f"({report['tokenizer'][:12]}, not {fingerprint[:12]})")
    return [by_chunk[number]["written"] for number in range(chunks)]


def worker_error(error):
    """The line that says why a pipeline failed: a TflmError a worker raised, else the last line."""
    text = str(error)
    found = re.findall(r"TflmError: (.+?)(?: \[while running '[^']*'\])?$", text, re.MULTILINE)
    return found[-1].strip() if found else first_line(text.strip().splitlines()[-1] if text.strip() else repr(error))


def first_line(text):
    """The first line of a message."""
    return text.strip().splitlines()[0] if text.strip() else ""
