"""The command line of `mediagen generate` and `mediagen jobs ...`: options, help and the
examples every command shows (kept apart from what the commands do)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mediagen.client._states import STATUSES

FORMATS = ("png", "jpg", "webp")

GENERATE_EXAMPLES = """\
examples:
  mediagen generate "a red fox"                          # ./<job_id>-0.png
  mediagen generate "a red fox" --width 512 --height 512 -o fox.png
  mediagen generate "a red fox" --num-outputs 3 -o fox.png   # fox-0.png fox-1.png fox-2.png
  mediagen generate "a red fox" --output-dir out --format webp --seed 42
  mediagen generate "a red fox" --param guidance_scale=7.5 --param negative_prompt='"blurry"'
  mediagen generate "the same fox at night" --image fox.png   # image-to-image
  mediagen generate "a fox, masked" --param image=@fox.png --param mask=@mask.png
  mediagen generate "a red fox" --logs                   # the model's log lines on stderr
  mediagen generate "a red fox" --priority high --retention 3600
  mediagen generate "a red fox" --no-wait                # prints the job id
  mediagen generate "a red fox" --json | jq -r '.files[]'

exit codes: 0 completed, 1 the job failed, was canceled or expired (its outputs deleted when
their retention ended), 2 usage error, 3 API error (401, 404, 429...), 130 interrupted (the
job goes on: mediagen jobs wait ID).
Configuration: MEDIAGEN_URL (default http://127.0.0.1:8000), MEDIAGEN_API_KEY.
"""

JOBS_EXAMPLES = """\
examples:
  mediagen jobs list --status completed --limit 10
  mediagen jobs show 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
  mediagen jobs wait 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
  mediagen jobs download 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed -o out
  mediagen jobs cancel 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
  mediagen jobs delete 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
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

DELETE_EXAMPLES = """\
examples:
  mediagen jobs delete 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
(an unfinished job is canceled first; its outputs, input files and record are deleted)
"""

WAIT_EXAMPLES = """\
examples:
  mediagen jobs wait 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed
  mediagen jobs wait 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed --json
  mediagen jobs wait 1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed --logs   # the model's log lines too
  mediagen jobs wait ID && mediagen jobs download ID -o out
exit codes: 0 completed, 1 failed, canceled or expired (completed, but its outputs were
deleted when their retention ended: nothing to download), 3 API error, 130 interrupted.
"""

MODELS_EXAMPLES = """\
examples:
  mediagen models                      # name, provider, and which is the default
  mediagen models --json               # the API's list, with each model's input schema
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
    """KEY=VALUE: VALUE as JSON if it parses, else the string; KEY=@FILE: the local file, a
    Path (which the client uploads). A string that starts with @ is given as JSON: '"@x"'."""
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    if raw.startswith("@"):
        if not raw[1:]:
            raise argparse.ArgumentTypeError(f"expected KEY=@FILE, got {value!r}")
        return key.strip(), Path(raw[1:])
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
        "--image",
        metavar="FILE",
        help="an input image (uploaded first, then given as the `image` parameter; the upload "
        "is kept FILE_TTL, as any upload): the same as --param image=@FILE",
    )
    params.add_argument(
        "--priority",
        choices=("low", "normal", "high"),
        help="how soon it starts among queued jobs (default: normal; high if your key may)",
    )
    params.add_argument(
        "--retention",
        type=_positive,
        metavar="SECONDS",
        help="how long the outputs are kept (default: the service's RESULT_TTL)",
    )
    params.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other parameter; VALUE is read as JSON if it parses (7.5, true, "
        '"text"), else taken as a string; KEY=@FILE uploads the local FILE as that file '
        "parameter; repeatable",
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
    out.add_argument(
        "--logs", action="store_true", help="print the model's log lines to stderr as they come"
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
        choices=STATUSES,
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

    _job_command(
        jobs_sub,
        "delete",
        "delete a job and everything of it",
        "Delete a job: cancel it if unfinished, delete its outputs, input files and record.",
        DELETE_EXAMPLES,
    )

    wait = _job_command(
        jobs_sub,
        "wait",
        "follow a job's progress until it ends",
        "Follow a job's progress until it is finished: completed, failed, canceled or expired.",
        WAIT_EXAMPLES,
    )
    wait.add_argument("--json", action="store_true", help="print the finished job as JSON")
    wait.add_argument(
        "--logs", action="store_true", help="print the model's log lines to stderr as they come"
    )

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
    models = sub.add_parser(
        "models",
        help="the models the service runs",
        description="The models the service runs for you (what --model takes), default first.",
        epilog=MODELS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.add_argument("--json", action="store_true", help="the API's JSON, with input schemas")
    _connection_options(models)
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
