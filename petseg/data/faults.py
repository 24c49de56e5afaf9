"""What counts as a bad file: the fault kinds, a sample's faults and the report of a scan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petseg.data.layout import sample_files, split_file

EXCLUDE = "exclude.txt"  # in annotations/, beside the split lists
BREAKING = frozenset(  # setup stops unless exclude.txt lists the sample (files: or data.skip_bad)
    {
        "unreadable",
        "truncated",
        "unsupported-mode",  # no faithful RGB conversion, e.g. 16-bit
        "size-mismatch",  # image vs trimap
        "trimap-values",  # outside {1, 2, 3}
        "missing-image",  # a split list names a sample with no file
        "missing-trimap",
        "split-overlap",  # a test-list name also in trainval: test leakage
    }
)
# Handled by the reader, listed for information: "format-mismatch" (PNG or GIF bytes in a .jpg: PIL
# opens files by content) and "mode" (grayscale, RGBA, palette, CMYK: converted to RGB).

# Modes whose .convert("RGB") is faithful; others (I;16, I, F) would come out clipped.
RGB_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})


@dataclass(frozen=True)
class Fault:
    """One problem of one file: `kind` is one of BREAKING or a handled kind (above)."""

    name: str  # the sample, as the split list names it
    path: str  # the file, relative to the dataset folder
    kind: str
    detail: str

    @property
    def breaking(self) -> bool:
        return self.kind in BREAKING

    def line(self) -> str:
        return f"{self.path}: {self.kind}: {self.detail}"


@dataclass
class Report:
    """Faults of a list of samples, and what the scan cost."""

    base: Path
    names: list[str]
    faults: list[Fault]
    decoded: int
    cached: int
    seconds: float
    excluded: set[str] = field(default_factory=set)

    def bad_names(self) -> list[str]:
        """Samples with a breaking fault, in scan order (what --write-exclude writes)."""
        return list(dict.fromkeys(f.name for f in self.faults if f.breaking))

    def blocking(self) -> list[Fault]:
        """Breaking faults not covered by the exclude list: training would stop on these."""
        return [f for f in self.faults if f.breaking and f.name not in self.excluded]

    def text(self) -> str:
        breaking = [f for f in self.faults if f.breaking]
        handled = [f for f in self.faults if not f.breaking]
        lines = [
            f"petseg data check of {self.base}",
            f"  {len(self.names)} samples: {self.decoded} files decoded, {self.cached} from the "
            f"cache, {self.seconds:.2f} s",
        ]
        if breaking:
            lines.append(
                f"Breaking (training stops on these; --write-exclude or data.skip_bad=true skips "
                f"them): {len(breaking)} files of {len(self.bad_names())} samples"
            )
            lines += [
                f"  {f.line()}" + ("  [excluded]" if f.name in self.excluded else "")
                for f in breaking
            ]
        if handled:
            lines.append(f"Handled by the reader (information only): {len(handled)} files")
            lines += [f"  {f.line()}" for f in handled]
        clean = sorted(self.excluded & set(self.names) - set(self.bad_names()))
        if clean:
            lines.append(
                f"annotations/{EXCLUDE} lists {len(clean)} samples that are now clean "
                f"({', '.join(clean[:5])}{', ...' if len(clean) > 5 else ''}); "
                "--write-exclude drops them"
            )
        blocking = self.blocking()
        if blocking:
            lines.append(
                f"Result: {len(blocking)} breaking files outside annotations/{EXCLUDE} (exit 1)"
            )
        else:
            lines.append(f"Result: no breaking file outside annotations/{EXCLUDE} (exit 0)")
        return "\n".join(lines)


def split_overlap(trainval: list[str], test: list[str]) -> list[Fault]:
    """A `split-overlap` fault per test-list name also in trainval: it would leak into training."""
    train = set(trainval)
    both = [name for name in dict.fromkeys(test) if name in train]
    detail = f"also in {split_file('trainval')}: a test image in training"
    return [Fault(name, split_file("test"), "split-overlap", detail) for name in both]


def judge(name: str, image: dict[str, Any] | None, trimap: dict[str, Any] | None) -> list[Fault]:
    """The faults of one sample from its files' inspections (None: the file does not exist)."""
    image_rel, trimap_rel = sample_files(name)
    faults = []
    for rel, info, what in ((image_rel, image, "image"), (trimap_rel, trimap, "trimap")):
        if info is None:
            faults.append(
                Fault(name, rel, f"missing-{what}", "named in a split list, no such file")
            )
        elif "error" in info:
            kind = "truncated" if "truncated" in info["error"] else "unreadable"
            faults.append(Fault(name, rel, kind, f"cannot decode ({info['error']})"))
        else:
            expected = {".jpg": "JPEG", ".png": "PNG"}[Path(rel).suffix]
            if info["format"] != expected:
                detail = f"{info['format']} data in a {Path(rel).suffix} file; read by content"
                faults.append(Fault(name, rel, "format-mismatch", detail))
    if image and "error" not in image and image["mode"] != "RGB":
        if image["mode"] in RGB_MODES:
            detail = f"{image['mode']}; the reader converts it to RGB"
            faults.append(Fault(name, image_rel, "mode", detail))
        else:
            detail = f"{image['mode']} has no faithful RGB conversion; re-save as 8-bit RGB"
            faults.append(Fault(name, image_rel, "unsupported-mode", detail))
    if trimap and "error" not in trimap:
        if trimap["mode"] not in ("L", "P"):
            detail = f"{trimap['mode']}; the reader converts it to L"
            faults.append(Fault(name, trimap_rel, "mode", detail))
        if trimap["bad_values"]:
            detail = f"values {trimap['bad_values']} outside {{1, 2, 3}} (pet, background, border)"
            faults.append(Fault(name, trimap_rel, "trimap-values", detail))
    if image and trimap and "error" not in image and "error" not in trimap:
        (iw, ih), (tw, th) = image["size"], trimap["size"]
        if (iw, ih) != (tw, th):
            detail = f"image is {iw}x{ih} but its trimap {Path(trimap_rel).name} is {tw}x{th}"
            faults.append(Fault(name, image_rel, "size-mismatch", detail))
    return faults
