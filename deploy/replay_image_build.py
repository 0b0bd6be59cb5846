"""Replays the Dockerfile's build stage without a container runtime, then runs what it built.

The build stage (the one the final stage copies the binary from) is replayed instruction by
instruction in an empty temporary directory standing for the container's filesystem:
WORKDIR and ENV as Docker reads them, COPY with exactly the files it names from the build
context (the checkout minus .dockerignore, as the Docker CLI computes it), RUN through
/bin/sh. So a file the build needs but the Dockerfile does not copy (an include_str!, a
build script, embedded migrations) fails here as it would fail `docker build`.

Three departures, for speed and for the lack of a container:
- cargo runs offline (the crates come from the host's cache, fetched beforehand) with
  CARGO_TARGET_DIR set to the project's target directory, so the release build of the
  dependencies is shared; `<WORKDIR>/target/` in the final stage's COPY means that directory;
- a RUN that installs Debian packages is not run: the packages it names must be installed
  on the host instead (checked with dpkg);
- a RUN may not name an absolute path, so the replay can never write outside its directory.
Anything else the replay does not understand stops it with a message saying so.

The binary is then started as the final stage's ENTRYPOINT + CMD with the final stage's ENV
(so APP_ENV=production, with a JWT_SECRET given), on a free port and a fresh SQLite file; it
must answer 200 on /livez, /ops/ and /docs/, then exit 0 on SIGTERM.

Usage: python replay_image_build.py [PROJECT_DIR]   (needs dockerfile-parse and docker)
"""

import http.client
import json
import os
import queue
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser
from dockerfile_parse.util import get_key_val_dictionary

STARTUP_SECONDS = 120  # generous: the shared machine may be loaded
REQUEST_SECONDS = 30
EXIT_SECONDS = 60
PAGES = ("/livez", "/ops/", "/docs/")
# Never in the build context: build output, local databases, secrets.
NEVER_IN_CONTEXT = ("target", "data", ".env", ".git")


class ReplayError(Exception):
    pass


def stages(parser):
    """The Dockerfile's stages in order: (name, [instructions])."""
    result = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            words = instruction["value"].split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(result))
            result.append((name, []))
        elif instruction["instruction"] != "COMMENT":
            if not result:
                raise ReplayError(f"line {instruction['startline'] + 1}: an instruction before FROM")
            result[-1][1].append(instruction)
    return result


def copy_arguments(value):
    """A COPY's (flags, sources, destination), shell form or JSON form."""
    words = shlex.split(value)
    flags = [word for word in words if word.startswith("--")]
    rest = [word for word in words if not word.startswith("--")]
    if rest and rest[0].startswith("["):
        rest = json.loads(value[value.index("[") :])
    if len(rest) < 2:
        raise ReplayError(f"COPY {value}: needs a source and a destination")
    return flags, rest[:-1], rest[-1]


def build_context(project):
    """The paths the Docker CLI would send as the build context (files and directories)."""
    ignore_file = project / ".dockerignore"
    patterns = []
    if ignore_file.exists():
        for line in ignore_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    context = exclude_paths(str(project), patterns)
    leaked = [path for path in NEVER_IN_CONTEXT if path in context]
    if leaked:
        raise ReplayError(f".dockerignore lets {', '.join(leaked)} into the build context")
    return context


def copy_into(project, context, sources, destination, workdir, root):
    """COPY: each named file, or a directory's content, as far as the context has it."""
    target = Path(destination) if destination.startswith("/") else workdir / destination
    target = root / target.relative_to("/")
    into_directory = destination.endswith("/") or len(sources) > 1
    for source in sources:
        name = os.path.normpath(source).lstrip("/")
        if any(character in name for character in "*?["):
            raise ReplayError(f"COPY {source}: wildcards are not replayed; name the files")
        if name != "." and name not in context:
            raise ReplayError(f"COPY {source}: not in the build context (missing, or excluded by .dockerignore)")
        path = project / name
        if path.is_dir():
            inside = [entry for entry in context if name == "." or entry.startswith(name + "/")]
            for inner in sorted(inside):
                if (project / inner).is_file():
                    copied = target / Path(inner).relative_to(name)
                    copied.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(project / inner, copied)  # keeps mtimes, as Docker does
        else:
            copied = target / path.name if into_directory else target
            copied.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copied)


def is_package_install(command):
    return "apt-get" in command


def check_packages_installed(command):
    """The Debian packages an apt-get RUN would install must be on the host already."""
    for part in command.split("&&"):
        words = part.split()
        if not words:
            continue
        if words[0] == "apt-get" and len(words) > 1 and words[1] == "update":
            continue
        if words[:2] == ["apt-get", "install"]:
            for package in (word for word in words[2:] if not word.startswith("-")):
                installed = subprocess.run(
                    ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
                )
                if "install ok installed" not in installed.stdout:
                    raise ReplayError(f"the build stage installs {package}: install it here (apt-get install {package})")
            continue
        if words[:2] == ["rm", "-rf"] and all(word.startswith("/var/lib/apt/lists") for word in words[2:]):
            continue
        raise ReplayError(f"RUN {command}: only apt-get is skipped; split the other work into its own RUN")


def run_command(command, cwd, env):
    if command.startswith("["):
        argv = json.loads(command)
    else:
        if any(word.startswith("/") for word in shlex.split(command)):
            raise ReplayError(f"RUN {command}: an absolute path; the replay only runs commands inside its directory")
        argv = ["/bin/sh", "-c", command]
    print(f"  RUN {command}", flush=True)
    started = time.monotonic()
    if subprocess.run(argv, cwd=cwd, env=env).returncode != 0:
        raise ReplayError(f"RUN {command}: failed")
    print(f"      ({time.monotonic() - started:.0f} s)", flush=True)


def base_environment(target_dir):
    """What a RUN sees: a clean environment, as in a container, plus offline cargo."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "TMPDIR") if key in os.environ}
    env.update(CARGO_TARGET_DIR=str(target_dir), CARGO_NET_OFFLINE="true")
    return env


def replay_build(project, target_dir, stage, root):
    context = build_context(project)
    workdir = Path("/")
    env = base_environment(target_dir)
    for instruction in stage:
        kind, value = instruction["instruction"], instruction["value"]
        if kind == "WORKDIR":
            workdir = workdir / value
            (root / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        elif kind == "ENV":
            env.update(get_key_val_dictionary(value))
        elif kind == "COPY":
            flags, sources, destination = copy_arguments(value)
            if any(flag.startswith("--from") for flag in flags):
                raise ReplayError(f"COPY {value}: copying from another stage is not replayed")
            print(f"  COPY {value}", flush=True)
            copy_into(project, context, sources, destination, workdir, root)
        elif kind == "RUN":
            if is_package_install(value):
                check_packages_installed(value)
                print(f"  RUN {value}\n      (not run: the packages are installed here)", flush=True)
            else:
                run_command(value, root / workdir.relative_to("/"), env)
        else:
            raise ReplayError(f"{kind} {value}: the replay does not know this instruction in the build stage")
    return workdir


def built_binary(final_stage, build_name, build_workdir, target_dir):
    """Where the final stage's COPY --from=<build stage> finds the binary, in the replay."""
    for instruction in final_stage:
        if instruction["instruction"] != "COPY":
            continue
        flags, sources, _ = copy_arguments(instruction["value"])
        if f"--from={build_name}" not in flags:
            continue
        source = Path(sources[0])
        try:
            inside_target = source.relative_to(build_workdir / "target")
        except ValueError:
            raise ReplayError(f"COPY {instruction['value']}: the replay expects the binary under {build_workdir}/target/")
        binary = target_dir / inside_target
        if not binary.is_file():
            raise ReplayError(f"the build stage did not produce {source}")
        return binary
    raise ReplayError(f"the final stage copies nothing from the stage {build_name}")


def exec_form(final_stage, kind):
    words = []
    for instruction in final_stage:
        if instruction["instruction"] == kind:
            words = json.loads(instruction["value"])
    return words


def get(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_SECONDS)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def run_binary(binary, final_stage, scratch):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for instruction in final_stage:
        if instruction["instruction"] == "ENV":
            env.update(get_key_val_dictionary(instruction["value"]))
    env.update(
        BIND_ADDR="127.0.0.1:0",
        DATABASE_URL=f"sqlite://{scratch}/data/storefront.db",
        LOG_FORMAT="json",
        JWT_SECRET=secrets.token_hex(32),
    )
    argv = [str(binary)] + exec_form(final_stage, "ENTRYPOINT")[1:] + exec_form(final_stage, "CMD")
    print(f"  {' '.join(argv[1:]) or '(no arguments)'} with APP_ENV={env.get('APP_ENV')}, a JWT_SECRET, "
          f"{env['DATABASE_URL']}", flush=True)
    child = subprocess.Popen(argv, cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    log = []

    def drain():
        for line in child.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        port = None
        deadline = time.monotonic() + STARTUP_SECONDS
        while port is None:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ReplayError(f"no 'storefront is listening' within {STARTUP_SECONDS} s")
            if line is None:
                raise ReplayError(f"the binary exited with {child.wait()} before listening:\n{''.join(log)}")
            log.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "storefront is listening":
                port = int(record["port"])
        for path in PAGES:
            status = get(port, path)
            if status != 200:
                raise ReplayError(f"GET {path} answered {status}, not 200")
            print(f"  GET {path} → 200", flush=True)
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=EXIT_SECONDS)
        if code != 0:
            raise ReplayError(f"after SIGTERM the binary exited with {code}")
        print("  SIGTERM → exit 0", flush=True)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def main():
    project = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    started = time.monotonic()
    metadata = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
        cwd=project, check=True, capture_output=True, text=True,
    )
    target_dir = Path(json.loads(metadata.stdout)["target_directory"])
    # Online once, in the checkout: the replay itself builds offline.
    subprocess.run(["cargo", "fetch", "--locked"], cwd=project, check=True)

    all_stages = stages(DockerfileParser(str(project / "Dockerfile"), env_replace=True))
    final_name, final_stage = all_stages[-1]
    build_names = [flag.split("=", 1)[1] for instruction in final_stage if instruction["instruction"] == "COPY"
                   for flag in copy_arguments(instruction["value"])[0] if flag.startswith("--from=")]
    if len(set(build_names)) != 1:
        raise ReplayError(f"the final stage must copy from one build stage, not {build_names}")
    build_name = build_names[0]
    build_stage = dict(all_stages[:-1]).get(build_name)
    if build_stage is None:
        raise ReplayError(f"no stage named {build_name}")

    with tempfile.TemporaryDirectory(prefix="storefront-image-replay-") as scratch:
        scratch = Path(scratch)
        root = scratch / "build-root"
        print(f"replaying the build stage '{build_name}' in {root} (target dir {target_dir})", flush=True)
        build_workdir = replay_build(project, target_dir, build_stage, root)
        binary = built_binary(final_stage, build_name, build_workdir, target_dir)
        print(f"running {binary} as the final stage would", flush=True)
        run_dir = scratch / "run"
        run_dir.mkdir()
        run_binary(binary, final_stage, run_dir)
    print(f"image build replayed: the build stage builds, its binary answers {', '.join(PAGES)} "
          f"({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    try:
        main()
    except ReplayError as error:
        print(f"image build replay: {error}", file=sys.stderr)
        sys.exit(1)
