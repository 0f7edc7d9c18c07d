"""Users' own code: the folders given by `--code-path`, taken as a snapshot per job.

A job's snapshot is a zip of those folders taken when the job is planned. It travels inside
the trainable (Ray pickles it to every trial process, on any node: no shared file system is
needed) and each process unpacks it once, into a folder named by its digest, put first on
`sys.path`. Modules imported from an older snapshot or from the folders themselves are
forgotten first, so an edited module is imported afresh by the next job, with no restart, and
every trial of one job runs the same code, whatever is edited while it runs.

Ray's `runtime_env` (py_modules) would ship the folders too, but it is fixed for the worker's
Ray job when the worker starts, so it cannot give each lrtune job the code of its own time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import io
import os
import sys
import tempfile
import traceback
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# Larger than any model's source folder; what is bigger is almost surely data or checkpoints,
# which belong somewhere the code reads them from, not in every trial's copy.
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
# Not code: caches, version control, virtual environments.
_SKIPPED_FOLDERS = frozenset({"__pycache__", ".git", ".hg", ".venv", "venv", ".mypy_cache"})


class CodePathError(ValueError):
    """A code path cannot be used: missing, not a folder, or too big to ship."""


class EntrypointRefused(ValueError):
    """An entrypoint names a module outside the code paths and the allowed packages."""


@dataclass(frozen=True)
class EntrypointSources:
    """Where a job's entrypoint may come from: the code-path folders (a snapshot's, in a trial
    process) and the installed packages the operator names in LRTUNE_ENTRYPOINT_PACKAGES.
    Anything else, `subprocess:getoutput` or `os:system` above all, is refused before it is
    imported: an entrypoint runs as the worker, so a token holder must not pick any callable."""

    folders: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()

    @classmethod
    def of(cls, folders: Sequence[str | Path], packages: Sequence[str]) -> EntrypointSources:
        """The sources of code-path folders as configured (resolved, as a snapshot names them)."""
        return cls(tuple(str(Path(f).resolve()) for f in folders), tuple(packages))

    def check(self, entrypoint: str) -> None:
        """Raise EntrypointRefused unless the entrypoint's top-level package lies in one of the
        folders or is an allowed package. Imports nothing: `importlib.util.find_spec` of a
        dotted name would import its parents, so only the top level is looked up, on the
        folders alone."""
        module_name = entrypoint.partition(":")[0]
        top = module_name.partition(".")[0]
        if top in self.packages:
            return
        shadowed = top in sys.builtin_module_names or top in sys.stdlib_module_names
        if shadowed or importlib.machinery.PathFinder.find_spec(top, list(self.folders)) is None:
            raise EntrypointRefused(self._refusal(entrypoint, top))

    def check_imported(self, entrypoint: str, module: ModuleType) -> None:
        """After the import: the module really came from a folder or an allowed package (a
        module of that name imported earlier from elsewhere would be the one Python returns)."""
        top = entrypoint.partition(":")[0].partition(".")[0]
        if top in self.packages:
            return
        file = getattr(module, "__file__", None)
        prefixes = tuple(os.path.join(os.path.abspath(f), "") for f in self.folders)
        if not file or not os.path.abspath(file).startswith(prefixes):
            raise EntrypointRefused(self._refusal(entrypoint, top))

    def _refusal(self, entrypoint: str, top: str) -> str:
        folders = ", ".join(self.folders) if self.folders else "none"
        packages = ", ".join(self.packages) if self.packages else "none"
        return (
            f"entrypoint {entrypoint!r} is refused: {top!r} is neither in the code paths "
            f"(--code-path / LRTUNE_CODE_PATH: {folders}) nor an allowed package "
            f"(LRTUNE_ENTRYPOINT_PACKAGES: {packages}); an entrypoint must be code given to "
            "lrtune that way"
        )


# This process's sources: set by the snapshot it activated last; none until then, so an
# entrypoint is refused in a process that was given no code.
_active_sources = EntrypointSources()


def active_sources() -> EntrypointSources:
    """Where entrypoints may come from in this process (see `CodeSnapshot.activate`)."""
    return _active_sources


@dataclass(frozen=True)
class CodeSnapshot:
    """The code-path folders as one zip: entry "<index>/<relative path>" per file, with the
    installed packages entrypoints may also come from."""

    archive: bytes
    digest: str
    folders: tuple[str, ...]
    packages: tuple[str, ...] = ()

    @classmethod
    def take(
        cls, folders: Sequence[str | Path], *, packages: Sequence[str] = ()
    ) -> CodeSnapshot | None:
        """Zip `folders` now (None when there are neither folders nor packages). Raises
        CodePathError."""
        if not folders and not packages:
            return None
        buffer = io.BytesIO()
        size = 0
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for index, folder in enumerate(folders):
                root = Path(folder).resolve()
                if not root.is_dir():
                    raise CodePathError(f"code path {str(folder)!r} is not a folder")
                for path in sorted(_files(root)):
                    size += path.stat().st_size
                    if size > MAX_SNAPSHOT_BYTES:
                        raise CodePathError(
                            f"code path {str(folder)!r} holds more than "
                            f"{MAX_SNAPSHOT_BYTES // 2**20} MiB; keep data and checkpoints "
                            "outside the folders given with --code-path"
                        )
                    # A fixed timestamp: the same code gives the same digest.
                    entry = zipfile.ZipInfo(f"{index}/{path.relative_to(root).as_posix()}")
                    entry.date_time = (1980, 1, 1, 0, 0, 0)
                    archive.writestr(entry, path.read_bytes())
        data = buffer.getvalue()
        return cls(
            archive=data,
            digest=hashlib.sha256(data).hexdigest()[:16],
            folders=tuple(str(Path(f).resolve()) for f in folders),
            packages=tuple(packages),
        )

    @property
    def sources(self) -> EntrypointSources:
        """Where entrypoints may come from, judged on the folders themselves (the snapshot
        holds the same files), before any process unpacks it."""
        return EntrypointSources(self.folders, self.packages)

    def activate(self) -> list[str]:
        """Make this snapshot's modules the importable ones in this process, and the only
        place (with its packages) entrypoints may come from; returns the folders put on
        `sys.path`. Cheap when already active (a process runs many trials)."""
        global _active_sources
        base = Path(tempfile.gettempdir()) / "lrtune-code" / self.digest
        roots = [str(base / str(index)) for index in range(len(self.folders))]
        _active_sources = EntrypointSources(tuple(roots), self.packages)
        if not (base / ".complete").exists():
            _unpack(self.archive, base)
        stale = [p for p in sys.path if _is_code_folder(p) and p not in roots]
        stale += [p for p in self.folders if p in sys.path]
        if not stale and sys.path[: len(roots)] == roots:
            return roots
        forget_modules([*stale, *roots])
        sys.path[:] = [p for p in sys.path if p not in stale and p not in roots]
        sys.path[0:0] = roots
        importlib.invalidate_caches()
        return roots


def forget_modules(folders: Iterable[str]) -> list[str]:
    """Drop from `sys.modules` every module whose file lies under one of `folders`, so the
    next import reads the files again. Returns the names dropped."""
    prefixes = tuple(os.path.join(os.path.abspath(f), "") for f in folders)
    dropped = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and os.path.abspath(file).startswith(prefixes):
            del sys.modules[name]
            dropped.append(name)
    return dropped


def innermost_user_frame(error: BaseException) -> str | None:
    """ "file:line in function" of the deepest traceback frame outside lrtune, torch and the
    installed packages: where the user's code went wrong (None when no such frame)."""
    ours = os.path.dirname(os.path.abspath(__file__))
    library_roots = tuple({os.path.dirname(os.__file__), ours, *_site_packages()})
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if frame.filename.startswith("<") or path.startswith(library_roots):
            continue
        return f"{_display_path(path)}:{frame.lineno} in {frame.name}"
    return None


def describe_user_error(error: BaseException) -> str:
    """The user's exception as a trial's error: type, message and innermost user frame."""
    where = innermost_user_frame(error)
    text = f"{type(error).__name__}: {error}"
    return f"{text} (at {where})" if where else text


def _files(root: Path) -> Iterable[Path]:
    for current, folders, files in os.walk(root):
        folders[:] = [f for f in folders if f not in _SKIPPED_FOLDERS]
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                yield Path(current) / name


def _unpack(archive: bytes, base: Path) -> None:
    # Unpacked beside, then renamed: two processes unpacking at once never see half a tree.
    base.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{base.name}-", dir=base.parent))
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        zipped.extractall(staging)
    (staging / ".complete").touch()
    try:
        staging.rename(base)
    except OSError:  # another process got there first; its copy is the same code
        import shutil

        shutil.rmtree(staging, ignore_errors=True)


def _is_code_folder(path: str) -> bool:
    return (os.sep + "lrtune-code" + os.sep) in path


def _site_packages() -> list[str]:
    import site
    import sysconfig

    roots = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    roots += getattr(site, "getsitepackages", list)()
    return [os.path.abspath(root) for root in roots]


def _display_path(path: str) -> str:
    """A snapshot's file by its path inside the code folder, not the temporary copy's."""
    marker = os.sep + "lrtune-code" + os.sep
    if marker in path:
        # .../lrtune-code/<digest>/<index>/<relative path>
        return path.split(marker, 1)[1].split(os.sep, 2)[-1]
    return path
