"""`mediagen generate` and `mediagen jobs ...`: the user's commands, on :mod:`mediagen.client`.

Only the standard library, httpx, rich and the client: no server code is imported, so the
commands work wherever the client is installed. Configured like the client by ``MEDIAGEN_URL``
and ``MEDIAGEN_API_KEY`` (or ``--url`` / ``--api-key``).

Exit codes: 0 done (a completed job), 1 the job failed or was canceled, 2 a usage error (also
an output path that cannot be written), 3 an API error (401, 404, 429...: its message and code
on stderr), 130 interrupted (the job goes on).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from mediagen.client import Client, Job, MediagenError

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3
EXIT_INTERRUPTED = 130

FORMATS = ("png", "jpg", "webp")
CLOSE_SECONDS = 3.0

GENERATE_EXAMPLES = """\
examples:
  mediagen generate "a red fox"                          # ./<job_id>-0.png
  mediagen generate "a red fox" --width 512 --height 512 -o fox.png
  mediagen generate "a red fox" --num-outputs 3 -o fox.png   # fox-0.png fox-1.png fox-2.png
  mediagen generate "a red fox" --output-dir out --format webp --seed 42
  mediagen generate "a red fox" --param guidance_scale=7.5 --param negative_prompt='"blurry"'
  mediagen generate "a red fox" --no-wait                # prints the job id
  mediagen generate "a red fox" --json | jq -r '.files[]'

exit codes: 0 completed, 1 the job failed or was canceled, 2 usage error, 3 API error
(401, 404, 429...), 130 interrupted (the job goes on: mediagen jobs wait ID).
Configuration: MEDIAGEN_URL (default http://127.0.0.1:8000), MEDIAGEN_API_KEY.
"""

JOBS_EXAMPLES = """\
examples:
  mediagen jobs list --status completed --limit 10
  mediagen jobs show 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
  mediagen jobs wait 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
  mediagen jobs download 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed -o out
  mediagen jobs cancel 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
"""

LIST_EXAMPLES = """\
examples:
  mediagen jobs list                       # your 20 newest jobs
  mediagen jobs list --status failed --limit 100
  mediagen jobs list --json | jq -r '.[].job_id'
"""

SHOW_EXAMPLES = """\
examples:
  mediagen jobs show 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
  mediagen jobs show 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed --json | jq .outputs
"""

CANCEL_EXAMPLES = """\
examples:
  mediagen jobs cancel 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
(a job already finished cannot be canceled: exit code 3, code conflict)
"""

WAIT_EXAMPLES = """\
examples:
  mediagen jobs wait 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
  mediagen jobs wait 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed --json
  mediagen jobs wait ID && mediagen jobs download ID -o out
exit codes: 0 completed, 1 failed or canceled, 3 API error, 130 interrupted.
"""

DOWNLOAD_EXAMPLES = """\
examples:
  mediagen jobs download 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed          # ./<job_id>-<n>.<ext>
  mediagen jobs download 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed -o out
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with examples kept as written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url", help="the API's address (default: $MEDIAGEN_URL, else http://127.0.0.1:8000)"
    )
    group.add_argument("--api-key", metavar="KEY", help="the API key (default: $MEDIAGEN_API_KEY)")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return number


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None


def _param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw  # a bare word: the string itself
    return key.strip(), parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mediagen",
        description="Generate images with a mediagen service and manage your jobs.",
        epilog=GENERATE_EXAMPLES.split("\n\n")[0] + "\n  mediagen jobs list\n",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,jobs}")

    gen = sub.add_parser(
        "generate",
        help="submit a prompt, follow its progress, download the outputs",
        description="Submit a prompt, show its progress, and download every output.",
        epilog=GENERATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("prompt", help="what to generate")
    params = gen.add_argument_group("parameters")
    params.add_argument("--width", type=_positive, metavar="N")
    params.add_argument("--height", type=_positive, metavar="N")
    params.add_argument("--seed", type=_integer, metavar="N")
    params.add_argument("--steps", type=_positive, metavar="N", help="inference steps")
    params.add_argument("--format", choices=FORMATS, help="output format (default: png)")
    params.add_argument("--num-outputs", type=_positive, metavar="N", help="outputs (1-4)")
    params.add_argument("--model", metavar="M", help="the model (default: the service's)")
    params.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other parameter; VALUE is read as JSON if it parses (7.5, true, "
        '"text"), else taken as a string; repeatable',
    )
    out = gen.add_argument_group("output")
    where = out.add_mutually_exclusive_group()
    where.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the output to FILE (several: FILE-0.ext, FILE-1.ext...)",
    )
    where.add_argument(
        "--output-dir",
        metavar="DIR",
        help="write outputs into DIR as <job_id>-<n>.<ext> (default: the current directory)",
    )
    out.add_argument(
        "--no-wait", action="store_true", help="submit and print the job id, nothing more"
    )
    out.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (job_id, status, files, error); no progress display",
    )
    _connection_options(gen)

    jobs = sub.add_parser(
        "jobs",
        help="list, show, wait for, download or cancel your jobs",
        description="Your jobs: list, show, wait, download, cancel.",
        epilog=JOBS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)

    lst = jobs_sub.add_parser(
        "list",
        help="your jobs, newest first",
        description="Your jobs, newest first.",
        epilog=LIST_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lst.add_argument(
        "--status",
        choices=("pending", "processing", "completed", "failed", "canceled"),
        help="only jobs with this status",
    )
    lst.add_argument("--limit", type=_positive, default=20, metavar="N", help="at most N (20)")
    lst.add_argument("--json", action="store_true", help="a JSON array of the jobs")
    _connection_options(lst)

    show = _job_command(
        jobs_sub,
        "show",
        "one job in detail",
        "One job in detail: status, parameters, error, outputs.",
        SHOW_EXAMPLES,
    )
    show.add_argument("--json", action="store_true", help="the API's JSON for the job")

    _job_command(
        jobs_sub, "cancel", "cancel an unfinished job", "Cancel an unfinished job.", CANCEL_EXAMPLES
    )

    wait = _job_command(
        jobs_sub,
        "wait",
        "follow a job's progress until it ends",
        "Follow a job's progress until it is completed, failed or canceled.",
        WAIT_EXAMPLES,
    )
    wait.add_argument("--json", action="store_true", help="print the finished job as JSON")

    download = _job_command(
        jobs_sub,
        "download",
        "download a completed job's outputs",
        "Download every output of a completed job as <job_id>-<n>.<ext>.",
        DOWNLOAD_EXAMPLES,
    )
    download.add_argument(
        "-o", "--output-dir", metavar="DIR", default=".", help="where (default: here)"
    )
    return parser


def _job_command(
    sub: Any, name: str, summary: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """A `mediagen jobs NAME ID` command with its help, examples and connection options."""
    command: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("job_id", metavar="ID")
    _connection_options(command)
    return command


# -- progress ----------------------------------------------------------------------------------


class _MarkColumn(SpinnerColumn):
    """A spinner while the job runs, then ✓ or ✗ (the task's ``mark`` field)."""

    def render(self, task: Task) -> RenderableType:
        mark = task.fields.get("mark")
        return Text.from_markup(mark) if mark else super().render(task)


class _Display:
    """What a wait shows on stderr: a rich progress bar on a terminal, plain status lines
    elsewhere, nothing with --json. Fed by the client's progress callback (its own thread)."""

    def __init__(self, job: Job, quiet: bool) -> None:
        self.job_id = job.id
        self.status = job.status
        self.queue_position = job.queue_position if job.status == "pending" else None
        self.percent: int | None = job.progress.percent if job.progress else None
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.fancy = not quiet and self.console.is_terminal
        self._lock = threading.Lock()
        self._printed: tuple[str, int | None] | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def _where(self) -> str:
        """The queue position (jobs created before this one still pending), while pending."""
        if self.status == "pending" and self.queue_position is not None:
            return f" ({self.queue_position} ahead in the queue)"
        return ""

    def _description(self) -> str:
        style = {"completed": "green", "failed": "red", "canceled": "yellow"}.get(
            self.status, "bold"
        )
        return f"job {self.job_id[:8]} [{style}]{self.status}[/{style}]{self._where()}"

    def __enter__(self) -> _Display:
        if self.fancy:
            self._progress = Progress(
                _MarkColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self._description(), total=None if self.percent is None else 100
            )
            if self.percent is not None:
                self._progress.update(self._task, completed=self.percent)
        self._show()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def event(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            if event == "status":
                status = str(data.get("status") or self.status)
                if status != "pending":
                    self.queue_position = None
                self.status = status
                if status == "completed":
                    self.percent = 100
            elif event == "progress":
                try:
                    self.percent = max(0, min(100, int(data["percent"])))
                except (KeyError, TypeError, ValueError):
                    return
            else:
                return
            self._show()

    def _show(self) -> None:
        if self.quiet:
            return
        if self._progress is not None and self._task is not None:
            finished = self.status in ("completed", "failed", "canceled")
            self._progress.update(
                self._task,
                description=self._description(),
                total=None if self.percent is None and not finished else 100,
                completed=self.percent or 0,
            )
            if finished:
                mark = "[green]✓[/green]" if self.status == "completed" else "[red]✗[/red]"
                self._progress.update(self._task, mark=mark)
                self._progress.stop_task(self._task)
            return
        # Plain lines: each status once, progress in steps of 10%.
        step = None if self.percent is None else self.percent // 10 * 10
        shown = (self.status, step)
        if shown == self._printed:
            return
        self._printed = shown
        line = f"job {self.job_id}: {self.status}{self._where()}"
        if step is not None and self.status not in ("pending", "completed"):
            line += f" {self.percent}%"
        print(line, file=sys.stderr, flush=True)


def _follow(client: Client, job: Job, quiet: bool) -> Job:
    """Wait for `job` with the progress display; the finished job."""
    with _Display(job, quiet) as display:
        if job.done:
            return job
        return client.wait(job.id, progress=display.event)


# -- outputs -----------------------------------------------------------------------------------


def _download_to_file(client: Client, job: Job, target: Path) -> list[Path]:
    """Outputs as `target` (one) or `<stem>-<n><suffix>` (several), via a scratch directory
    beside it so a half-written file never carries the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".mediagen-", dir=target.parent))
    try:
        fetched = client.download(job, scratch)
        if len(fetched) == 1:
            names = [target]
        else:
            names = [
                target.with_name(f"{target.stem}-{n}{target.suffix or path.suffix}")
                for n, path in enumerate(fetched)
            ]
        for path, name in zip(fetched, names, strict=True):
            path.replace(name)
        return names
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _summary(job: Job, files: Sequence[Path]) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "files": [str(path) for path in files],
        "error": job.error,
    }


def _job_failed(job: Job) -> int:
    print(
        f"mediagen: job {job.id} {job.status}: {job.error or 'no error given'}",
        file=sys.stderr,
    )
    return EXIT_JOB_FAILED


def _interrupted(job_id: str | None) -> int:
    if job_id:
        print(f"interrupted; the job goes on: mediagen jobs wait {job_id}", file=sys.stderr)
    else:
        print("interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


# -- commands ----------------------------------------------------------------------------------


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    parameters: dict[str, Any] = dict(args.param)
    named = {
        "width": args.width,
        "height": args.height,
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "output_format": args.format,
        "num_outputs": args.num_outputs,
    }
    parameters.update({key: value for key, value in named.items() if value is not None})
    return parameters


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    job = client.generate(args.prompt, model=args.model, **_parameters(args))
    if args.no_wait:
        if args.json:
            print(json.dumps(_summary(job, [])))
        else:
            print(job.id)
        return EXIT_OK
    try:
        job = _follow(client, job, quiet=args.json)
    except KeyboardInterrupt:
        return _interrupted(job.id)
    files: list[Path] = []
    if job.status == "completed":
        if args.output:
            files = _download_to_file(client, job, Path(args.output))
        else:
            files = client.download(job, args.output_dir or ".")
    if args.json:
        print(json.dumps(_summary(job, files)))
    else:
        for path in files:
            print(path)
    return EXIT_OK if job.status == "completed" else _job_failed(job)


def _when(job: Job) -> str:
    return job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else "-"


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    jobs = client.list(status=args.status, limit=min(args.limit, 100))
    try:
        found = list(itertools.islice(jobs, args.limit))
    finally:
        close = getattr(jobs, "close", None)  # a generator: stop paging now
        if close is not None:
            close()
    if args.json:
        print(json.dumps([job.raw for job in found]))
        return EXIT_OK
    if not found:
        print("no jobs", file=sys.stderr)
        return EXIT_OK
    for job in found:
        prompt = (job.prompt or "").replace("\n", " ")
        if len(prompt) > 60:
            prompt = prompt[:59] + "…"
        print(f"{job.id}  {job.status:<10}  {_when(job)}  {prompt}")
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.job_id)
    if args.json:
        print(json.dumps(job.raw, indent=2))
        return EXIT_OK
    rows: list[tuple[str, Any]] = [
        ("job", job.id),
        ("status", job.status),
        ("prompt", job.prompt),
        ("model", job.model),
        ("parameters", json.dumps(job.parameters) if job.parameters else None),
        ("created", _when(job)),
        ("queue position", job.queue_position),
        ("progress", f"{job.progress.percent}%" if job.progress else None),
        ("attempts", job.attempts or None),
        ("duration", f"{job.duration_seconds:.1f} s" if job.duration_seconds else None),
        ("error", job.error),
    ]
    for name, value in rows:
        if value is not None and value != "":
            print(f"{name + ':':<16}{value}")
    for n, output in enumerate(job.outputs):
        extra = f" ({output.content_type}, {output.size} bytes)" if output.size else ""
        print(f"{f'output {n}:':<16}{output.url}{extra}")
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    print(f"job {job.id}: {job.status}")
    return EXIT_OK


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.job_id)  # its queue position, and a 404 before any display
    try:
        job = _follow(client, job, quiet=args.json)
    except KeyboardInterrupt:
        return _interrupted(job.id)
    if args.json:
        print(json.dumps(_summary(job, [])))
    elif job.status == "completed":
        print(f"job {job.id}: completed; mediagen jobs download {job.id}")
    return EXIT_OK if job.status == "completed" else _job_failed(job)


def cmd_download(client: Client, args: argparse.Namespace) -> int:
    for path in client.download(args.job_id, args.output_dir):
        print(path)
    return EXIT_OK


COMMANDS = {
    ("generate", None): cmd_generate,
    ("jobs", "list"): cmd_list,
    ("jobs", "show"): cmd_show,
    ("jobs", "cancel"): cmd_cancel,
    ("jobs", "wait"): cmd_wait,
    ("jobs", "download"): cmd_download,
}


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Client]:
    client = Client(url=args.url, api_key=args.api_key)
    try:
        yield client
    finally:
        # Closed on a thread of its own, a few seconds at most: after a Ctrl-C the process
        # exits promptly whatever the connections are doing (the job lives on the server).
        closer = threading.Thread(target=_close_quietly, args=(client,), daemon=True)
        closer.start()
        with contextlib.suppress(KeyboardInterrupt):
            closer.join(CLOSE_SECONDS)


def _close_quietly(client: Client) -> None:
    with contextlib.suppress(Exception):
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)  # exit 2 on usage errors
    command = COMMANDS[(args.command, getattr(args, "jobs_command", None))]
    try:
        with _client(args) as client:
            return command(client, args)
    except MediagenError as exc:
        print(f"mediagen: {exc}", file=sys.stderr)
        if exc.retry_after is not None:
            print(f"mediagen: retry after {exc.retry_after:g} s", file=sys.stderr)
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return _interrupted(None)
    except OSError as exc:  # an output that cannot be written where asked
        print(f"mediagen: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
