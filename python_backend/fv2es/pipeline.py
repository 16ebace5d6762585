"""The pipeline as data: the ensemble's steps, their tensors and their serving settings, in order.

This one description drives everything that knows the graph:
- `fv2es_build.repository` writes every config.pbtxt and model.py from it (the model.py of a step
  imports `fv2es.serving.<runner>`), and the ensemble's wiring;
- `fv2es.inprocess` runs the same steps in the same order in one process;
- the benchmarks and tests read stage names, batched models and tensor names from it.

Values come from `fv2es.config`; `steps()` depends on config.AUDIO_INPUT (the Whisper states from
asr, or the mel step's chunks) and config.SPARSE_VISUAL (the face selection before the visual encoder).
"""

from __future__ import annotations

from dataclasses import asdict, replace

from . import config, modalities as modality_registry
from .graph import Step, Tensor, boolean, fp32, int64, string
from .modalities import Modality
from .streams import StreamLimits

C = len(config.LABELS)
LABELS_FILE = "labels.txt"
GROUP_LABELS_FILE = "group_labels.txt"
LABEL_FILES = {LABELS_FILE: config.LABELS, GROUP_LABELS_FILE: config.GROUP_LABELS}  # file -> the class names it lists
G = len(config.GROUP_LABELS)


ENSEMBLE_INPUT = string("VIDEO", 1)
ENSEMBLE_OUTPUTS = ("SEGMENT_TIMES", "TRANSCRIPTS", "SEGMENT_SCORES", "SEGMENT_HAS_SPEECH", "SEGMENT_HAS_FACE",
                    "VIDEO_SCORES", "LABELS", "MODEL_INFO",
                    # one timeline per person (added after the first eight, which keep their meaning)
                    "SEGMENT_SPEAKER", "PERSON_SEGMENTS", "PERSON_SEGMENT_SCORES", "PERSON_SCORES",
                    # the group's emotion (fv2es.models.group)
                    "GROUP_SEGMENT_SCORES", "GROUP_SCORES")

INPUT_LIMITS = {"max_input_bytes": str(config.MAX_INPUT_BYTES), "max_duration_s": str(config.MAX_DURATION_S)}
# How clients read the scores: below this top score a result is marked unsure (ensemble and stream model).
RESULT_PARAMETERS = {"unsure_below": str(config.UNSURE_BELOW)}
# The steps after demux validate times, audio lengths and segment counts against the same limit.
DURATION_LIMIT = {"max_duration_s": str(config.MAX_DURATION_S)}


def steps(weights: str = "", audio_input: str | None = None, modalities: tuple[Modality, ...] | None = None,
          sparse_visual: bool | None = None) -> list[Step]:
    """The steps of the ensemble, in an order where every input is produced before it is read.
    `weights` describes the served weights (MODEL_INFO carries it; `fv2es_build.repository`);
    `modalities` (default: fv2es.modalities for `audio_input`) gives the encoders and the fusion's inputs;
    `sparse_visual` (default config.SPARSE_VISUAL) adds FE2E's sparse attention over the face rows."""
    sparse_visual = config.SPARSE_VISUAL if sparse_visual is None else sparse_visual
    audio_input = audio_input or config.AUDIO_INPUT
    if audio_input not in config.AUDIO_INPUTS:
        raise ValueError(f"AUDIO_INPUT {audio_input!r} is not one of {config.AUDIO_INPUTS}")
    entries = modalities or modality_registry.modalities(audio_input)
    modality_registry.check(entries)
    whisper = audio_input == "whisper"
    tokens, speech_dim, s = config.TEXT_MAX_TOKENS, 2 * config.SPEECH_STATE_DIM, config.FACE_SIZE

    def encoder(m: Modality) -> Step:
        return Step(m.encoder, "torchscript", m.encoder_inputs, (fp32(m.features, m.feature_dim),), max_batch_size=m.max_batch_size,
                    kind="KIND_AUTO", parameters={"weights": weights, "rows_per_forward": str(m.rows_per_forward)})

    asr_outputs = (fp32("SEGMENT_TIMES", -1, 2), string("TRANSCRIPTS", -1), boolean("SEGMENT_HAS_SPEECH", -1),
                   int64("TEXT_IDS", -1, tokens), int64("TEXT_MASK", -1, tokens))
    if whisper:
        asr_outputs += (fp32("SPEECH_ROWS", -1, speech_dim), int64("SPEECH_SEGMENT", -1))
    # The fusion reads each modality's features and index (its rows' segments, or per-segment flags);
    # the per-person fusion reads the people step's versions of what a person's timeline replaces.
    fusion_inputs = tuple(t for m in entries for t in m.fusion_inputs())
    fusion_sources = {m.index: m.index_source for m in entries if m.index != m.index_source}
    person_sources = {name: person for m in entries for name, person in m.person_tensors().items()}
    person_inputs = tuple(t for m in entries for t in m.person_inputs())
    person_outputs = tuple(Tensor(person_sources[t.name], t.dtype, t.dims) for t in fusion_inputs if t.name in person_sources)
    fusion_outputs = (Tensor("SEGMENT_SCORES", "FP32", (-1, C), labels=LABELS_FILE),)
    preprocessing = [step for m in entries for step in m.preprocess]
    # The models that read modality tensors by their entries run the entries the repository was built with.
    served_modalities = {modality_registry.PARAMETER: modality_registry.to_parameter(entries)}
    encoders = [encoder(m) for m in entries]
    if sparse_visual:  # the face rows' encoder runs after the others, on the rows they select
        face = modality_registry.face_modality(entries)
        encoders = [e for e in encoders if e.name != face.encoder] + [sparse_step(entries, weights)] + \
                   [e for e in encoders if e.name == face.encoder]
    wired = [
        Step("demux", "demux", (ENSEMBLE_INPUT,), (fp32("AUDIO", -1), int64("AUDIO_START", 1), fp32("DURATION", 1)),
             parameters=INPUT_LIMITS),
        Step("face_crop", "face_crop", (ENSEMBLE_INPUT, fp32("DURATION", 1)),
             (fp32("FACES", -1, 1, s, s), fp32("FACE_TIMES", -1), int64("FACE_PERSON", -1), boolean("FACE_MAIN", -1),
              fp32("FACE_MOUTH", -1), fp32("SCENE", -1, 1, config.SCENE_SIZE, config.SCENE_SIZE), fp32("SCENE_TIMES", -1)),
             kind="KIND_AUTO", parameters={"detector": config.FACE_DETECTOR, "cascade": config.FACE_CASCADE, **INPUT_LIMITS}),
        # SPEECH_PROBS (optional): the VAD's probabilities of AUDIO's windows, from a stream that has them.
        Step("asr", "asr", (fp32("AUDIO", -1), int64("AUDIO_START", 1), fp32("DURATION", 1), SPEECH_PROBS), asr_outputs, kind="KIND_AUTO",
             # audio_branch_asr_model: what the audio weights were trained on (build/export.py checks it); the
             # asr model refuses to load with another asr_model.
             parameters={"asr_model": config.ASR_MODEL, "audio_branch_asr_model": config.ASR_MODEL,
                         "beam_size": str(config.ASR_BEAM_SIZE),
                         "language": config.ASR_LANGUAGE or "", "cpu_threads": str(config.ASR_CPU_THREADS),  # "": detected
                         "temperature": str(config.ASR_TEMPERATURE), "text_model": config.TEXT_MODEL,
                         "audio_input": audio_input, **DURATION_LIMIT}),
        *preprocessing,
        Step("assign_faces", "assign_faces", (fp32("FACE_TIMES", -1), boolean("FACE_MAIN", -1), fp32("SEGMENT_TIMES", -1, 2)),
             (int64("FACE_SEGMENT", -1), boolean("SEGMENT_HAS_FACE", -1)), parameters=DURATION_LIMIT),
        *encoders,
        Step("fusion", "torchscript", fusion_inputs, fusion_outputs, sources=fusion_sources,
             kind="KIND_AUTO", parameters={"weights": weights, **DURATION_LIMIT, **served_modalities}),
        # One timeline per person: each (person, segment) pair is a segment of its own for the same
        # fusion model, with that person's faces, and the segment's speech when they are its speaker
        # (each modality's person_rows). people reads SEGMENT_SCORES only to run after the fusion: two
        # steps calling one model at once both fail when its stub dies, and Triton 2.51 can then
        # leave the request unanswered.
        Step("people", "people",
             (fp32("FACE_TIMES", -1), int64("FACE_PERSON", -1), fp32("FACE_MOUTH", -1), fp32("SEGMENT_TIMES", -1, 2),
              boolean("SEGMENT_HAS_SPEECH", -1), *person_inputs, fp32("SEGMENT_SCORES", -1, C)),
             (int64("SEGMENT_SPEAKER", -1), int64("PERSON_PAIRS", -1, 2), *person_outputs),
             sources=fusion_sources, parameters={**DURATION_LIMIT, **served_modalities}),
        Step("person_fusion", "torchscript", fusion_inputs, fusion_outputs, model="fusion",
             sources={**fusion_sources, **person_sources}, targets={"SEGMENT_SCORES": "PAIR_SCORES"}),
        *group_steps(entries, weights),
        Step("aggregate", "aggregate", (fp32("SEGMENT_SCORES", -1, C), fp32("SEGMENT_TIMES", -1, 2)),
             (Tensor("VIDEO_SCORES", "FP32", (C,), labels=LABELS_FILE), string("LABELS", C), string("MODEL_INFO", 1)),
             parameters={"weights": weights, "labels_file": LABELS_FILE, **DURATION_LIMIT}),
        Step("people_aggregate", "people_aggregate",
             (int64("PERSON_PAIRS", -1, 2), fp32("PAIR_SCORES", -1, C), fp32("SEGMENT_TIMES", -1, 2)),
             (int64("PERSON_SEGMENTS", -1, 2), Tensor("PERSON_SEGMENT_SCORES", "FP32", (-1, C), labels=LABELS_FILE),
              Tensor("PERSON_SCORES", "FP32", (-1, C), labels=LABELS_FILE)),
             parameters=DURATION_LIMIT),
    ]
    return with_kept_faces(wired) if sparse_visual else wired


# FE2E's sparse cross-modal attention (fv2es.models.sparse, config.SPARSE_VISUAL): a step after the
# other encoders keeps some of the face rows; every step after it reads the kept rows of the tensors
# that have one row per face (FACE_ROWS and FACE_SEGMENT, the face modality's index source) instead.
# `people` also reads every face: each segment's speaker is found from all of them (FACE_MOUTH).
SPARSE_STEP = "face_select"
FACE_ROWS = ("FACES", "FACE_TIMES", "FACE_PERSON")
KEPT_PREFIX = "KEPT_"
SPARSE_PARAMETER = "sparse_visual"  # the stream model's: "true" where its repository has the face selection


def sparse_step(entries: tuple[Modality, ...], weights: str) -> Step:
    """The face selection: the face rows (with the face modality's index), the segments' times and
    the other modalities' fusion inputs -> the kept face rows."""
    face = modality_registry.face_modality(entries)
    s = config.FACE_SIZE
    rows = (fp32("FACES", -1, 1, s, s), fp32("FACE_TIMES", -1), int64("FACE_PERSON", -1), int64(face.index, -1))
    queries = tuple(t for m in entries if m is not face for t in m.fusion_inputs())
    sources = {m.index: m.index_source for m in entries if m.index != m.index_source}
    return Step(SPARSE_STEP, "torchscript", rows + queries + (fp32("SEGMENT_TIMES", -1, 2),),
                tuple(Tensor(KEPT_PREFIX + sources.get(t.name, t.name), t.dtype, t.dims) for t in rows),
                sources=sources, kind="KIND_AUTO",
                parameters={"weights": weights, **DURATION_LIMIT, modality_registry.PARAMETER: modality_registry.to_parameter(entries)})


def with_kept_faces(wired: list[Step]) -> list[Step]:
    """The steps after the face selection read its kept rows instead of all face rows; but the people
    step finds each segment's speaker from every face (their mouth motion) and reads the kept rows'
    times and persons beside them (FACE_ROW_TIMES, FACE_ROW_PERSON) for the rows of the face modality."""
    at = next(i for i, step in enumerate(wired) if step.name == SPARSE_STEP)
    kept = {step_output.name.removeprefix(KEPT_PREFIX): step_output.name for step_output in wired[at].outputs}

    def reads_kept(step: Step) -> Step:
        if step.runner == "people":
            rows = (Tensor("FACE_ROW_TIMES", "FP32", (-1,), optional=True), Tensor("FACE_ROW_PERSON", "INT64", (-1,), optional=True))
            return replace(step, inputs=(*step.inputs, *rows),
                           sources={**step.sources, "FACE_ROW_TIMES": kept["FACE_TIMES"], "FACE_ROW_PERSON": kept["FACE_PERSON"]})
        return replace(step, sources={**step.sources, **{i.name: kept[step.source(i.name)] for i in step.inputs if step.source(i.name) in kept}})

    return wired[: at + 1] + [reads_kept(step) for step in wired[at + 1 :]]


def group_steps(entries: tuple[Modality, ...], weights: str) -> list[Step]:
    """The group model's step (fv2es.models.group): every face's features, the frames at low
    resolution and the audio's features -> group scores per segment and for the whole video. Only
    with an audio and a visual modality among the entries."""
    by_name = {m.name: m for m in entries}
    if not {"audio", "visual"} <= set(by_name):
        return []
    audio, visual, s = by_name["audio"], by_name["visual"], config.SCENE_SIZE
    return [Step("group", "torchscript",
                 (fp32(visual.features, -1, visual.feature_dim), fp32("FACE_TIMES", -1), *audio.fusion_inputs(),
                  fp32("SCENE", -1, 1, s, s), fp32("SCENE_TIMES", -1), fp32("SEGMENT_TIMES", -1, 2)),
                 (Tensor("GROUP_SEGMENT_SCORES", "FP32", (-1, G), labels=GROUP_LABELS_FILE),
                  Tensor("GROUP_SCORES", "FP32", (G,), labels=GROUP_LABELS_FILE)),
                 sources={audio.index: audio.index_source} if audio.index != audio.index_source else {},
                 kind="KIND_AUTO", parameters={"weights": weights, **DURATION_LIMIT,
                                               modality_registry.PARAMETER: modality_registry.to_parameter(entries)})]


# Silero's speech probability of each 32 ms window of a stretch's audio (fv2es.vad), from its start:
# a live stream's cutter has computed them, and the asr step then does not run the detector again.
SPEECH_PROBS = Tensor("SPEECH_PROBS", "FP32", (-1,), optional=True)

# The live stream's model: the container stream's next bytes in; responses: the stream's key on its
# first request ("open"), each segment as soon as it is final ("segment"), and after the last request
# the whole stream's scores ("end"). Every chunk after the first carries the key (fv2es/streams.py).
STREAM_EVENTS = ("open", "segment", "end")
STREAM_KEY = Tensor("STREAM_KEY", "STRING", (1,), optional=True)
# A stream's mode (config.STREAM_MODES), on its first request; without it the model's stream_mode.
STREAM_MODE = Tensor("STREAM_MODE", "STRING", (1,), optional=True)
STREAM_SEGMENT_OUTPUTS = ("SEGMENT_INDEX", "SEGMENT_TIMES", "TRANSCRIPTS", "SEGMENT_SCORES", "SEGMENT_HAS_SPEECH",
                          "SEGMENT_HAS_FACE", "SEGMENT_SPEAKER", "PERSON_SEGMENTS", "PERSON_SEGMENT_SCORES", "GROUP_SEGMENT_SCORES")
STREAM_END_OUTPUTS = ("VIDEO_SCORES", "PERSON_SCORES", "LABELS", "MODEL_INFO", "DURATION", "GROUP_SCORES")


def stream_step(pipeline: list[Step]) -> Step:
    """The live-stream model (fv2es.serving.stream): it runs the steps after demux and face detection
    of `pipeline` on each stretch of the stream (BLS), with the same tensors the ensemble gives."""
    by_name = {t.name: t for t in ensemble_outputs(pipeline)}
    by_name.update({"EVENT": string("EVENT", 1), "SEGMENT_INDEX": int64("SEGMENT_INDEX", 1), "DURATION": fp32("DURATION", 1)})
    by_name["STREAM_KEY"] = string("STREAM_KEY", 1)
    names = ("EVENT", "STREAM_KEY", *STREAM_SEGMENT_OUTPUTS, *STREAM_END_OUTPUTS)
    served_modalities = next(s.parameters for s in pipeline if s.name == "fusion")[modality_registry.PARAMETER]
    return Step(config.STREAM_MODEL_NAME, "stream", (string("CHUNK", 1), STREAM_KEY, STREAM_MODE), tuple(by_name[n] for n in names),
                kind="KIND_AUTO", decoupled=True,
                parameters={"detector": config.FACE_DETECTOR, "cascade": config.FACE_CASCADE, **INPUT_LIMITS,
                            **{k: str(v) for k, v in asdict(StreamLimits()).items()}, "labels": ",".join(config.LABELS),
                            **RESULT_PARAMETERS, modality_registry.PARAMETER: served_modalities, "stream_mode": config.STREAM_MODE,
                            SPARSE_PARAMETER: str(any(s.name == SPARSE_STEP for s in pipeline)).lower()})


def served_models(pipeline: list[Step]) -> list[Step]:
    """The steps that have a model folder of their own (one per model of the repository)."""
    return [s for s in pipeline if s.serves_model]


def batched_steps(audio_input: str | None = None) -> list[Step]:
    """The steps with dynamic batching (the encoders)."""
    return [s for s in steps(audio_input=audio_input) if s.batched]


def ensemble_outputs(pipeline: list[Step]) -> list[Tensor]:
    """The ensemble's outputs as the client sees them (a batched step's outputs gain the row dimension)."""
    produced = {s.target(t.name): (s, t) for s in pipeline for t in s.outputs}
    outputs = []
    for name in ENSEMBLE_OUTPUTS:
        owner, tensor = produced[name]
        outputs.append(Tensor(name, tensor.dtype, (-1, *tensor.dims) if owner.batched else tensor.dims, tensor.labels))
    return outputs


def plan(pipeline: list[Step], available: set[str], wanted=ENSEMBLE_OUTPUTS) -> list[Step]:
    """The steps, in order, that produce the tensors `wanted` from the tensors already `available`
    (the whole pipeline from VIDEO; the steps after demux and face detection from what a live
    stream or a two-phase run has already)."""
    needed = set(wanted) - available
    chosen = []
    for step in reversed(pipeline):
        if {step.target(o.name) for o in step.outputs} & needed:
            chosen.append(step)
            needed |= {step.source(i.name) for i in step.inputs if not i.optional} - available
    return chosen[::-1]


def tensors_of(pipeline: list[Step]) -> set[str]:
    """The ensemble's input and every tensor a step writes (an optional input none of them is, is left
    out of the wiring: `Step.inputs_from`)."""
    return {ENSEMBLE_INPUT.name} | {s.target(o.name) for s in pipeline for o in s.outputs}


def check_wiring(pipeline: list[Step]) -> None:
    """Every input is produced by an earlier step (or is the ensemble's input), once; every output is
    read by a step or is an ensemble output (Triton refuses an ensemble with a tensor nobody uses)."""
    available = {ENSEMBLE_INPUT.name}
    for s in pipeline:
        missing = [s.source(i.name) for i in s.inputs_from(available) if s.source(i.name) not in available]
        if missing:
            raise ValueError(f"step {s.name} reads {', '.join(missing)}, which no earlier step produces")
        produced = [s.target(t.name) for t in s.outputs]
        twice = [name for name in produced if name in available]
        if twice:
            raise ValueError(f"step {s.name} produces {', '.join(twice)} again")
        available |= set(produced)
    read = {s.source(i.name) for s in pipeline for i in s.inputs}
    unused = sorted(available - read - set(ENSEMBLE_OUTPUTS) - {ENSEMBLE_INPUT.name})
    if unused:
        raise ValueError(f"no step reads {', '.join(unused)} and the ensemble does not return it")


def check_outputs_unread(pipeline: list[Step]) -> None:
    """No step reads an ensemble output. Triton's pruning for a request that asks for some outputs
    only assumes so; otherwise such requests fail with "unexpected deadlock" (the model repository's
    ensemble reads copies: fv2es_build.repository.ensemble_steps)."""
    read = [f"{s.name} reads {s.source(i.name)}" for s in pipeline for i in s.inputs if s.source(i.name) in ENSEMBLE_OUTPUTS]
    if read:
        raise ValueError(f"steps read ensemble outputs ({'; '.join(read)}): a request for some outputs only would deadlock")

