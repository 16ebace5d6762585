"""The modalities as data: one entry per stream of features that the fusion combines.

Everything that used to name audio, visual and text follows from these entries:
- `fv2es.pipeline`: each entry's preprocessing steps and its encoder step (a batched TorchScript
  model `<name>_encoder` from the entry's row tensors to `<NAME>_FEATURES`), the fusion's inputs and
  their sources, the people step's inputs and the per-person fusion's sources;
- `fv2es.models.fusion`: one fusion branch per entry (a sequence encoder and head, or a head alone),
  its class map onto the served labels, its modality weight and temperature;
- `fv2es.checks.fusion_inputs` and `models.checked`: what the fusion's inputs must hold;
- `fv2es.people.person_rows`: which of a segment's rows go to which person;
- training (`models.branches.create_branch`, `build/settings.py`'s branches, the fusion fit).

Adding a stream = one entry in `modalities()` plus its encoder in `fv2es.models.create` (and the
steps that make its rows, if no step makes them yet). A built repository records its entries in the
`modalities` parameter of the models that read them (`to_parameter`, `from_model`).
tests/test_modalities.py builds a pipeline with a fourth entry and checks that the fusion, the
checks, the people rows and the configs follow, and serves it with a real tritonserver.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from . import config
from .graph import Step, Tensor, fp32, int64

# How a modality's rows meet the segments:
SEQUENCE = "sequence"  # any number of feature rows per segment, each with its segment (<NAME>_SEGMENT, -1: none)
PER_SEGMENT = "segment"  # one feature row per segment and a flag: the segment has it (<NAME>_PRESENT)
ROW_KINDS = (SEQUENCE, PER_SEGMENT)

# Which of a segment's rows a person's timeline gets (fv2es.people.person_rows):
FACES = "faces"  # the rows are the face rows (one per FACE_TIMES row): each goes to the person it shows
SPEAKER = "speaker"  # the segment's rows go to the person who speaks in it, if any
EVERYONE = "everyone"  # every person seen in the segment gets its row (PER_SEGMENT modalities only)
PERSON_RULES = (FACES, SPEAKER, EVERYONE)


@dataclass(frozen=True)
class Modality:
    name: str  # lower case; its encoder model is "<name>_encoder", its tensors <NAME>_FEATURES, <NAME>_SEGMENT or _PRESENT
    rows: str  # SEQUENCE or PER_SEGMENT
    encoder_inputs: tuple[Tensor, ...]  # the encoder's input tensors, per row (ensemble tensor names)
    index_source: str  # the ensemble tensor the fusion reads as <NAME>_SEGMENT (SEQUENCE) or <NAME>_PRESENT
    classes: tuple[str, ...]  # the classes of the corpus its branch is trained on (mapped by config.CLASS_TO_LABEL)
    person_rows: str  # FACES, SPEAKER or EVERYONE
    feature_dim: int = config.FEATURE_DIM  # the encoder's output width
    max_rows: str = ""  # SEQUENCE: the checks.Limits property that bounds its rows per request
    sequence_depth: int = 4  # SEQUENCE: layers of the fusion branch's sequence encoder
    max_batch_size: int = 64  # the encoder's dynamic batching
    rows_per_forward: int = 32  # rows per forward call of the encoder (bounds its activations)
    preprocess: tuple[Step, ...] = ()  # steps that make its rows and index, if no other step does

    def __post_init__(self) -> None:
        if self.rows not in ROW_KINDS:
            raise ValueError(f"modality {self.name}: rows {self.rows!r} is not one of {ROW_KINDS}")
        if self.person_rows not in PERSON_RULES:
            raise ValueError(f"modality {self.name}: person_rows {self.person_rows!r} is not one of {PERSON_RULES}")
        if self.rows == SEQUENCE and not self.max_rows:
            raise ValueError(f"modality {self.name}: a sequence modality needs max_rows (a checks.Limits property)")
        if self.person_rows == EVERYONE and self.rows != PER_SEGMENT:
            raise ValueError(f"modality {self.name}: only a per-segment modality can give its row to everyone")

    @property
    def encoder(self) -> str:
        return f"{self.name}_encoder"

    @property
    def features(self) -> str:
        return f"{self.name.upper()}_FEATURES"

    @property
    def index(self) -> str:
        return f"{self.name.upper()}_{'SEGMENT' if self.rows == SEQUENCE else 'PRESENT'}"

    @property
    def sequence(self) -> bool:
        return self.rows == SEQUENCE

    def fusion_inputs(self) -> tuple[Tensor, Tensor]:
        """The fusion's two inputs for this modality (request dims: rows first)."""
        index = int64(self.index, -1) if self.sequence else Tensor(self.index, "BOOL", (-1,))
        return fp32(self.features, -1, self.feature_dim), index

    def person_tensors(self) -> dict[str, str]:
        """The fusion's inputs that a person's timeline replaces: fusion input -> the people step's output."""
        replaced = (self.index,) if self.sequence else (self.features, self.index)
        return {name: f"PERSON_{name}" for name in replaced}

    def person_inputs(self) -> tuple[Tensor, ...]:
        """What the people step reads of this modality (the face rows' modality: nothing, the faces are read)."""
        if self.person_rows == FACES:
            return ()
        return (self.fusion_inputs()[1],) if self.sequence else self.fusion_inputs()


def modalities(audio_input: str | None = None) -> tuple[Modality, ...]:
    """The served modalities, in the order of the fusion's modality weights. `audio_input` (default
    config.AUDIO_INPUT) picks the audio branch's rows: Whisper encoder states from asr, or mel chunks."""
    audio_input = audio_input or config.AUDIO_INPUT
    if audio_input not in config.AUDIO_INPUTS:
        raise ValueError(f"AUDIO_INPUT {audio_input!r} is not one of {config.AUDIO_INPUTS}")
    whisper = audio_input == "whisper"
    mel = Step("mel", "mel", (fp32("AUDIO", -1), int64("AUDIO_START", 1), fp32("SEGMENT_TIMES", -1, 2)),
               (fp32("MEL_CHUNKS", -1, config.N_MELS, config.CHUNK_FRAMES), int64("MEL_SEGMENT", -1)), kind="KIND_AUTO",
               parameters={"max_duration_s": str(config.MAX_DURATION_S)})
    size = config.FACE_SIZE
    return (
        Modality("audio", SEQUENCE,
                 (fp32("SPEECH_ROWS", 2 * config.SPEECH_STATE_DIM),) if whisper else (fp32("MEL_CHUNKS", config.N_MELS, config.CHUNK_FRAMES),),
                 "SPEECH_SEGMENT" if whisper else "MEL_SEGMENT", config.RAVDESS_CLASSES, SPEAKER,
                 max_rows="max_chunks", sequence_depth=config.AUDIO_SEQUENCE_DEPTH[audio_input],
                 max_batch_size=config.ENCODER_MAX_BATCH["audio_encoder"],
                 rows_per_forward=config.ENCODER_ROWS_PER_FORWARD["audio_encoder"], preprocess=() if whisper else (mel,)),
        Modality("visual", SEQUENCE, (fp32("FACES", 1, size, size),), "FACE_SEGMENT", config.FER2013_CLASSES, FACES,
                 max_rows="max_faces", max_batch_size=config.ENCODER_MAX_BATCH["visual_encoder"],
                 rows_per_forward=config.ENCODER_ROWS_PER_FORWARD["visual_encoder"]),
        Modality("text", PER_SEGMENT, (int64("TEXT_IDS", config.TEXT_MAX_TOKENS), int64("TEXT_MASK", config.TEXT_MAX_TOKENS)),
                 "SEGMENT_HAS_SPEECH", config.MELD_CLASSES, SPEAKER, feature_dim=config.TEXT_FEATURE_DIM,
                 max_batch_size=config.ENCODER_MAX_BATCH["text_encoder"],
                 rows_per_forward=config.ENCODER_ROWS_PER_FORWARD["text_encoder"]),
    )


# The model parameter that carries a repository's modalities (fusion, people, the stream model): what
# `fv2es-build` built the repository with is what its models run, not the registry of the code that
# serves it (the same unless a repository is built with other entries, as tests/test_modalities.py does).
PARAMETER = "modalities"


def to_parameter(entries: tuple[Modality, ...]) -> str:
    """The entries as the JSON text of a model parameter."""
    return json.dumps([asdict(m) for m in entries], separators=(",", ":"))


def from_parameter(text: str) -> tuple[Modality, ...]:
    """The entries a model parameter holds (`to_parameter`'s text)."""

    def tensor(d: dict) -> Tensor:
        return Tensor(**{**d, "dims": tuple(d["dims"])})

    def step(d: dict) -> Step:
        return Step(**{**d, "inputs": tuple(map(tensor, d["inputs"])), "outputs": tuple(map(tensor, d["outputs"]))})

    entries = []
    for d in json.loads(text):
        d = {f.name: d[f.name] for f in fields(Modality)}
        entries.append(Modality(**{**d, "encoder_inputs": tuple(map(tensor, d["encoder_inputs"])), "classes": tuple(d["classes"]),
                                   "preprocess": tuple(map(step, d["preprocess"]))}))
    check(tuple(entries))
    return tuple(entries)


def from_model(parameter) -> tuple[Modality, ...]:
    """A served model's modalities, from its config parameter (`parameter(name, default) -> str`); a
    config without one (written before modalities were data) runs the registry's."""
    text = parameter(PARAMETER, "")
    return from_parameter(text) if text else modalities()


def names(entries: tuple[Modality, ...] | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in (entries or modalities()))


def by_name(name: str, entries: tuple[Modality, ...] | None = None) -> Modality:
    for m in entries or modalities():
        if m.name == name:
            return m
    raise KeyError(f"unknown modality {name!r}; known: {', '.join(names(entries))}")


def in_fusion_inputs(input_names: list[str] | tuple[str, ...], entries: tuple[Modality, ...] | None = None) -> tuple[Modality, ...]:
    """The modalities of a fusion model whose config has these input names (`entries`, default the
    registry's), refused at load unless the inputs are exactly those entries' features and indices:
    an input no entry explains, or an entry's input the config lacks (every request would fail)."""
    entries = entries or modalities()
    expected = [name for m in entries for name in (m.features, m.index)]
    unknown = [name for name in input_names if name not in expected]
    if unknown:
        raise ValueError(f"fusion inputs {', '.join(unknown)} belong to none of the modalities {', '.join(names(entries))}")
    missing = [name for name in expected if name not in input_names]
    if missing:
        raise ValueError(f"the fusion's config lacks the inputs {', '.join(missing)} of its modalities {', '.join(names(entries))}")
    check(entries)
    return entries


def check(entries: tuple[Modality, ...]) -> None:
    """A set of modalities the fusion can run: distinct names, one per-segment modality at least (its
    rows give the segment count), at most one whose rows are the faces."""
    seen = [m.name for m in entries]
    if len(set(seen)) != len(seen):
        raise ValueError(f"modality names repeat: {seen}")
    if not any(not m.sequence for m in entries):
        raise ValueError("the fusion needs one per-segment modality: its rows give the number of segments")
    if sum(m.person_rows == FACES for m in entries) > 1:
        raise ValueError("only one modality's rows can be the face rows")


def face_modality(entries: tuple[Modality, ...]) -> Modality:
    """The entry whose rows are the face rows (the one the sparse visual attention thins out)."""
    found = [m for m in entries if m.person_rows == FACES]
    if len(found) != 1:
        raise ValueError(f"no modality of {', '.join(names(entries))} has the face rows (person_rows {FACES!r})")
    return found[0]


def segment_count_input(entries: tuple[Modality, ...]) -> str:
    """The fusion input whose rows are the segments: the first per-segment modality's features."""
    return next(m.features for m in entries if not m.sequence)
