/*
 * moe.h - public API of libmoe, the moemap runtime.
 *
 * Conventions (one everywhere):
 *   - every public name starts with moe_ / MOE_;
 *   - handles are opaque, created and freed by the library;
 *   - every fallible call returns int: 0 on success or a negative MOE_E* code;
 *     moe_strerror(code) names the code, moe_last_error() gives the detail of the
 *     last failure in the calling thread ("layer 12 expert 201: checksum mismatch").
 *   - the library never prints and never exits.
 */
#ifndef MOE_H
#define MOE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Only what this header declares leaves libmoe.so (the library is built with
 * -fvisibility=hidden; these are marked default). */
#if defined(__GNUC__)
#define MOE_API __attribute__((visibility("default")))
#else
#define MOE_API
#endif

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0
#define MOE_VERSION_NUMBER (MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH)
MOE_API unsigned moe_version_number(void);

/* ---- errors ------------------------------------------------------------ */

enum moe_error {
	MOE_OK = 0,
	MOE_EINVAL = -1,       /* bad argument or option */
	MOE_EIO = -2,          /* read/write failed (errno detail in the message) */
	MOE_ENOMEM = -3,       /* allocation failed */
	MOE_EFORMAT = -4,      /* malformed or truncated file */
	MOE_EVERSION = -5,     /* pack major version not understood */
	MOE_ECHECKSUM = -6,    /* stored checksum does not match the bytes */
	MOE_EUNSUPPORTED = -7, /* valid input this build does not handle */
	MOE_ENOTFOUND = -8,    /* missing key, tensor or file */
	MOE_EEXIST = -9,       /* output exists */
	MOE_ENOSPC = -10,      /* disk full */
	MOE_ECANCELED = -11,   /* stopped by moe_session_cancel */
};

MOE_API const char *moe_strerror(int err);
/* Detail of the last failed call in this thread; "" if none. */
MOE_API const char *moe_last_error(void);

/* ---- helpers the tools share ----------------------------------------------- */

/* A size as every moemap tool takes it: a decimal number of bytes, optionally
 * followed by K, M, G or T (powers of 1024) and an optional B: "4096", "900M",
 * "1.5G", "2MB". Returns the bytes, or 0 if s is malformed, below one byte or
 * past 2^64. */
MOE_API uint64_t moe_parse_size(const char *s);
/* Seconds on a monotonic clock, for measuring durations. */
MOE_API double moe_now(void);

/* ---- weight types ------------------------------------------------------- */

/*
 * Numeric ids are stored in packs: never renumber, only append.
 * q8/q4 use 32-weight blocks with an fp16 scale, value-compatible with GGUF
 * Q8_0/Q4_0; in a pack a matrix stores all its rows' codes first, then all
 * its scales (see moepack(5)). The types from q4_1 on are GGUF's blocks kept
 * bit for bit: a matrix is its rows, each row its blocks in GGUF's layout.
 */
enum moe_type {
	MOE_TYPE_F32 = 0,
	MOE_TYPE_F16 = 1,
	MOE_TYPE_BF16 = 2,
	MOE_TYPE_Q8 = 3,
	MOE_TYPE_Q4 = 4,
	MOE_TYPE_Q4_1 = 5,   /* GGUF Q4_1: 32 weights, d and m */
	MOE_TYPE_Q5_0 = 6,   /* GGUF Q5_0 */
	MOE_TYPE_Q5_1 = 7,   /* GGUF Q5_1 */
	MOE_TYPE_Q2_K = 8,   /* GGUF Q2_K: 256 weights, 4-bit scales and mins per 16 */
	MOE_TYPE_Q3_K = 9,   /* GGUF Q3_K: 6-bit scales per 16 */
	MOE_TYPE_Q4_K = 10,  /* GGUF Q4_K: 6-bit scales and mins per 32 */
	MOE_TYPE_Q5_K = 11,  /* GGUF Q5_K */
	MOE_TYPE_Q6_K = 12,  /* GGUF Q6_K: 8-bit scales per 16 */
	MOE_TYPE_IQ4_NL = 13, /* GGUF IQ4_NL: 32 weights, 16 non-uniform levels */
	MOE_TYPE_IQ4_XS = 14, /* GGUF IQ4_XS: 256 weights, IQ4_NL levels, 6-bit scales per 32 */
	MOE_TYPE_MXFP4 = 15,  /* GGUF MXFP4 (gpt-oss): 32 FP4 E2M1 values, a power-of-two (E8M0) scale */
	MOE_TYPE_COUNT
};

/* "f32", "f16", "bf16", "q8", "q4", "q4_1", ... "q6_k", "iq4_nl", "iq4_xs", "mxfp4"; NULL for an unknown id. */
MOE_API const char *moe_type_name(int type);
/* Parse a name above; returns the id or MOE_EINVAL. */
MOE_API int moe_type_from_name(const char *name);
/* Bytes of a rows x cols matrix of this type; 0 if cols does not fit the block size. */
MOE_API uint64_t moe_type_matrix_bytes(int type, uint64_t rows, uint64_t cols);

/* ---- packs ---------------------------------------------------------------- */

typedef struct moe_pack moe_pack;

/*
 * Open a pack: maps it, checks magic, version, superblock and footer checksums,
 * that every section, tensor and expert lies inside the file, and the
 * metadata/directory checksums. Expert and tensor data are checked by
 * moe_pack_verify() (or by the runtime as they are read).
 */
MOE_API int moe_pack_open(const char *path, moe_pack **out);
/* The path it was opened with. */
MOE_API const char *moe_pack_path(const moe_pack *pack);
MOE_API void moe_pack_close(moe_pack *pack);

MOE_API uint64_t moe_pack_file_size(const moe_pack *pack);
MOE_API void moe_pack_version(const moe_pack *pack, unsigned *major, unsigned *minor);
MOE_API uint32_t moe_pack_alignment(const moe_pack *pack);

/* Metadata: typed key/values. */
enum moe_meta_type {
	MOE_META_U64 = 1,
	MOE_META_I64 = 2,
	MOE_META_F64 = 3,
	MOE_META_STR = 4,  /* UTF-8, no terminator stored (one is added in memory) */
	MOE_META_BLOB = 5, /* opaque bytes (tokenizer.json, ...) */
	MOE_META_I64_ARRAY = 6,
};
MOE_API size_t moe_pack_meta_count(const moe_pack *pack);
/* Key and type of entry i (i < moe_pack_meta_count); NULL if out of range. */
MOE_API const char *moe_pack_meta_key(const moe_pack *pack, size_t i, int *type);
MOE_API int moe_pack_meta_u64(const moe_pack *pack, const char *key, uint64_t *out);
MOE_API int moe_pack_meta_i64(const moe_pack *pack, const char *key, int64_t *out);
MOE_API int moe_pack_meta_f64(const moe_pack *pack, const char *key, double *out);
/* STR and BLOB: pointer into the mapping, valid until close; STR is NUL-terminated. */
MOE_API int moe_pack_meta_bytes(const moe_pack *pack, const char *key, const void **data, uint64_t *len);
MOE_API int moe_pack_meta_i64_array(const moe_pack *pack, const char *key, const int64_t **vals, uint64_t *n);

/* Dense tensors: used in place through the mapping. */
typedef struct moe_tensor {
	const char *name;   /* canonical name, e.g. "blk.3.attn_q" (moepack(5)) */
	int type;           /* enum moe_type */
	int n_dims;         /* 1 or 2 */
	uint64_t dims[2];   /* dims[0] = rows (outputs), dims[1] = cols (inputs); 1-D: dims[0] */
	const void *data;   /* 64-byte aligned */
	uint64_t size;      /* bytes */
	uint64_t offset;    /* in the file */
	uint64_t xxh3;      /* XXH3-64 of the bytes */
} moe_tensor;
MOE_API size_t moe_pack_tensor_count(const moe_pack *pack);
MOE_API int moe_pack_tensor_at(const moe_pack *pack, size_t i, moe_tensor *out);
MOE_API int moe_pack_tensor(const moe_pack *pack, const char *name, moe_tensor *out);

/* Experts: one blob per (layer, expert) holding gate, up and down. */
enum moe_codec { MOE_CODEC_RAW = 0, MOE_CODEC_ZSTD = 1 };
enum moe_expert_matrix { MOE_EXPERT_GATE = 0, MOE_EXPERT_UP = 1, MOE_EXPERT_DOWN = 2 };
typedef struct moe_expert_layout {
	int type[3];          /* per matrix (gate, up, down) */
	uint64_t rows[3], cols[3];
	uint64_t offset[3];   /* byte offset of each matrix inside the raw blob */
	uint64_t raw_size;    /* raw blob bytes of an expert in this layout */
} moe_expert_layout;
typedef struct moe_expert_info {
	uint32_t layer, expert;
	uint64_t offset;       /* in the file, a multiple of the pack alignment */
	uint64_t stored_size;  /* bytes on disk */
	uint64_t raw_size;     /* bytes once decoded */
	int layout;            /* its layout (moe_pack_expert_layout_at) */
	int codec;             /* enum moe_codec */
	uint64_t xxh3_stored;  /* of the stored bytes */
	uint64_t xxh3_raw;     /* of the decoded bytes */
} moe_expert_info;
/* Layout 0: the matrices' shapes, which every layout shares, and their types in most packs.
 * A pack whose matrix types differ by layer (GGUF's _M mixes kept as they are) has more
 * layouts, one per combination of types; each expert names its own. */
MOE_API void moe_pack_expert_layout(const moe_pack *pack, moe_expert_layout *out);
MOE_API size_t moe_pack_expert_layouts(const moe_pack *pack);
MOE_API int moe_pack_expert_layout_at(const moe_pack *pack, size_t i, moe_expert_layout *out);
/* The largest raw blob of any layout: what a buffer for any expert needs. */
MOE_API uint64_t moe_pack_expert_max_raw(const moe_pack *pack);
MOE_API size_t moe_pack_expert_count(const moe_pack *pack);
MOE_API int moe_pack_expert_at(const moe_pack *pack, size_t i, moe_expert_info *out);
MOE_API int moe_pack_expert(const moe_pack *pack, uint32_t layer, uint32_t expert, moe_expert_info *out);
/* The stored bytes of an expert in the mapping (valid until close), not verified. */
MOE_API int moe_pack_expert_stored(const moe_pack *pack, uint32_t layer, uint32_t expert, const void **data,
			   moe_expert_info *info);
/* Decode an expert from the mapping into dst (raw_size bytes), checking both checksums. */
MOE_API int moe_pack_expert_read(const moe_pack *pack, uint32_t layer, uint32_t expert, void *dst);

/*
 * Recompute every checksum (dense tensors, stored and raw expert bytes).
 * progress, if not NULL, is called after each item; returning non-zero stops.
 * On a mismatch returns MOE_ECHECKSUM; moe_last_error() names the tensor or
 * the layer and expert.
 */
typedef int (*moe_progress_fn)(void *user, uint64_t done, uint64_t total);
MOE_API int moe_pack_verify(const moe_pack *pack, moe_progress_fn progress, void *user);

/* ---- files ------------------------------------------------------------------ */

/* A whole small file (a template, a messages JSON, a text) into a malloc'd,
 * NUL-terminated buffer; at most 256 MiB. Errors: MOE_ENOTFOUND, MOE_EIO, MOE_EINVAL
 * (too large). */
MOE_API int moe_read_file(const char *path, char **data, size_t *len);

/* ---- running a model ---------------------------------------------------------
 *
 * A model is a pack opened for inference: its dense weights used in place, a
 * thread pool, and an expert cache that holds what --ram-budget leaves once the
 * dense weights and the sessions are counted. A session is one sequence: its KV
 * cache, the tokens in it, the logits of its last position. A model has any number
 * of sessions; the budget sets memory aside for n_sessions of them.
 *
 * Threads: a model and its sessions are used from one thread at a time (they share
 * the thread pool and the expert cache); moe_session_cancel alone may be called
 * from any thread or from a signal handler. Different models are independent.
 *
 *     moe_model_params mp;
 *     moe_model_params_init(&mp);
 *     mp.ram_budget = 8ull << 30;
 *     moe_model *m;  moe_session *s;
 *     if (moe_model_open("mixtral-q4.moe", &mp, &m) || moe_session_open(m, &s))
 *         fprintf(stderr, "%s\n", moe_last_error());
 *     ... moe_tokenize, moe_session_eval, moe_sampler_sample, moe_session_eval ...
 *
 * examples/generate.c is a whole program.
 */

typedef struct moe_model moe_model;
typedef struct moe_session moe_session;
typedef struct moe_tokenizer moe_tokenizer;

enum moe_kv_type { MOE_KV_F16 = 0, MOE_KV_F32 = 1 };
/* LRU: evict the least recently used expert. LFU: the least often used (aged).
 * NEXT: the one whose next use is expected farthest away: an expert of layer l is
 * next needed when layer l comes round again, and then with the probability its
 * past use gives (moe-tuning(7)). */
enum moe_cache_policy { MOE_POLICY_LRU = 0, MOE_POLICY_LFU = 1, MOE_POLICY_NEXT = 2 };
/* "lru", "lfu", "next" -> enum moe_cache_policy; -1 if unknown. */
MOE_API int moe_cache_policy_parse(const char *name);
/* The name of a policy ("lru" for an unknown one). */
MOE_API const char *moe_cache_policy_name(int policy);

#define MOE_MAX_BATCH 512 /* the largest n_batch */

typedef struct moe_model_params {
	int threads;             /* compute threads; default 0: every online CPU */
	uint64_t ram_budget;     /* bytes for dense weights + sessions + expert cache;
				    default 0: 90% of MemAvailable */
	size_t n_ctx;            /* context of each session in tokens (default 4096), capped at the model's */
	size_t n_batch;          /* tokens per forward pass, 1..MOE_MAX_BATCH (default 32) */
	unsigned n_sessions;     /* sessions the budget sets their KV cache aside for (default 1) */
	int kv_type;             /* enum moe_kv_type (default MOE_KV_F16) */
	int offload;             /* 1 (default): the expert cache; 0: experts through the page cache (mmap) */
	int cache_policy;        /* enum moe_cache_policy (default LRU) */
	unsigned prefetch_depth; /* layers whose experts are guessed ahead, 0..8 (default 1) */
	unsigned io_depth;       /* expert reads in flight, 1..256 (default 8) */
	int verify;              /* check the XXH3 of every expert read (default 1) */
	int mlock;               /* lock the dense weights and the expert cache in RAM (default 0) */
	double expert_timeout;   /* seconds an expert may take to arrive before it is an error (default 30) */
	unsigned experts_per_token; /* route each token to this many experts, fewer than the model's
				       (weights renormalized over them where the model renormalizes
				       its top k); default 0: the model's own number */
	/* Called from moe_model_open while the weights are read in (the dense ones; the
	 * whole pack with offload off when it fits), with the bytes done of total: once
	 * at 0, as the reads go on (at least every 64 MiB), and at total. A nonzero
	 * return stops the open with
	 * MOE_ECANCELED. Default NULL: none. */
	int (*progress)(uint64_t done, uint64_t total, void *user);
	void *progress_user;
	/* A pin list (moe-bench profile writes one): its experts are read at open into
	 * cache slots of their own and never evicted, as many as leave two slots to
	 * the policy, the list's first ones. Default NULL: none. Needs offload. */
	const char *pin_file;
} moe_model_params;

/* The defaults above. */
MOE_API void moe_model_params_init(moe_model_params *p);
/*
 * Open the pack at path (checked as moe_pack_open checks it), map its dense
 * weights, start the threads and the expert cache, and read its tokenizer and
 * chat template if it has them. p NULL: the defaults. Errors: those of
 * moe_pack_open; MOE_EINVAL for a parameter out of range or a budget below the
 * dense weights + the sessions + two experts (the message gives the figures);
 * MOE_EUNSUPPORTED for an architecture or weight type this build does not run;
 * MOE_ENOMEM when mlock is refused (RLIMIT_MEMLOCK); MOE_ECANCELED when the
 * progress callback says stop. The model's own threads split the work, so it
 * sets OpenBLAS to one thread per call, for the whole process (OpenBLAS has no
 * narrower setting).
 */
MOE_API int moe_model_open(const char *path, const moe_model_params *p, moe_model **out);
/* Frees the model; its sessions must be closed first. NULL is fine. */
MOE_API void moe_model_close(moe_model *m);

typedef struct moe_model_info {
	const char *arch;          /* "mixtral", "qwen3_moe", "deepseek_v3", "glm4_moe", "gpt_oss", "qwen3_next" */
	uint64_t n_layers, n_experts, n_experts_used, n_vocab;
	uint64_t n_ctx_train;      /* the model's longest context (0: not recorded) */
	size_t n_ctx, n_batch;     /* as opened */
	int threads;
	const char *kernels;       /* "avx512", "avx2", "neon", "scalar" */
	uint64_t dense_bytes;      /* resident weights: everything but the routed experts */
	uint64_t session_bytes;    /* KV cache and scratch of one session */
	uint64_t expert_cache_bytes; /* 0 with offload off */
} moe_model_info;
/* Strings stay valid until moe_model_close. */
MOE_API void moe_model_get_info(const moe_model *m, moe_model_info *out);
/* The pack (valid until moe_model_close). */
MOE_API const moe_pack *moe_model_pack(const moe_model *m);
/* The pack's tokenizer, NULL if it has none (then prompts are token ids). */
MOE_API const moe_tokenizer *moe_model_tokenizer(const moe_model *m);
/* The chat template: the pack's, else the built-in one of its family; NULL if none. */
MOE_API const char *moe_model_chat_template(const moe_model *m);

/* What the expert cache has done since the model was opened (cumulative). */
typedef struct moe_stats {
	uint64_t uses;            /* expert uses = hits + prefetch_hits + misses */
	uint64_t hits;            /* resident from an earlier use */
	uint64_t prefetch_hits;   /* brought in (or being brought in) by a guess */
	uint64_t misses;          /* read on demand */
	uint64_t prefetch_issued; /* guesses read */
	uint64_t bytes_read;      /* from disk */
	uint64_t rereads;         /* blobs read again after a checksum mismatch */
	double read_seconds;      /* wall time with reads in flight */
	double wait_seconds;      /* computing threads waiting for experts */
	uint64_t slots, slots_used;
	const char *io;           /* "io_uring", "pread", "mmap" */
	const char *policy;       /* "lru", "lfu", "next" */
	/* bytes of guesses that left the cache without being used (counted as their
	 * slots are taken; a guess still resident is not counted yet), and of those the
	 * ones evicted before the layer step they were guessed for had come */
	uint64_t prefetch_unused_bytes, prefetch_evicted_bytes;
	uint64_t slots_pinned;    /* slots holding the pin list's experts */
} moe_stats;
MOE_API void moe_model_stats(const moe_model *m, moe_stats *out);

/* A session with the model's n_ctx and kv_type. Errors: MOE_ENOMEM. */
MOE_API int moe_session_open(moe_model *m, moe_session **out);
MOE_API void moe_session_close(moe_session *s);
/*
 * Append n tokens to the context and run them, n_batch at a time. Then
 * moe_session_logits gives the next-token logits after the last one.
 * all_logits, if not NULL, receives [n][n_vocab] floats: every position's.
 * Errors: MOE_EINVAL (an id out of range, or the context would overflow; nothing
 * is run), MOE_ECANCELED (moe_session_cancel: the batches run so far stay in the
 * context), or what reading an expert failed with (MOE_EIO, MOE_ECHECKSUM). A model
 * with linear-attention layers (Qwen3-Next) keeps a state the stopped batch had
 * already moved on: there the context is emptied instead (moe_session_pos 0).
 */
MOE_API int moe_session_eval(moe_session *s, const int32_t *tokens, size_t n, float *all_logits);
/*
 * One token for each of n different sessions of one model, run as a single
 * batch (n <= n_batch): every expert is read once for all the sessions routed to
 * it. Each session's logits are then its own next-token logits. Same errors as
 * moe_session_eval; on an error no session has advanced (with linear-attention
 * layers each is emptied, as moe_session_eval says).
 */
MOE_API int moe_session_eval_batch(moe_session *const *sessions, const int32_t *tokens, size_t n);
/* n_vocab floats, valid until the next eval of s; NULL before any. */
MOE_API const float *moe_session_logits(const moe_session *s);
/* Tokens in the context, and the context's size. */
MOE_API size_t moe_session_pos(const moe_session *s);
MOE_API size_t moe_session_ctx(const moe_session *s);
/* The moe_session_pos tokens in the context, valid until the next call on s. */
MOE_API const int32_t *moe_session_tokens(const moe_session *s);
/* How many of tokens[0..n) the context already starts with and can keep (prompt
 * reuse): on a model with sliding-window layers (gpt-oss), whose caches are rings of
 * the window plus a batch, going back further than that keeps nothing (0); a model
 * with linear-attention layers (Qwen3-Next) has the state after its last token only,
 * so all of the context or nothing. */
MOE_API size_t moe_session_common_prefix(const moe_session *s, const int32_t *tokens, size_t n);
/* Keep only the first pos tokens (pos <= moe_session_pos); the next eval goes on
 * from there. moe_session_logits is NULL until then. A pos that the rings of a
 * sliding-window model no longer cover (one moe_session_common_prefix did not give,
 * nor one less), or any pos short of the end on a linear-attention model, keeps
 * nothing: moe_session_pos says where the session is. */
MOE_API void moe_session_rewind(moe_session *s, size_t pos);
/* Ask the eval running on s (or the next one) to stop between two layers with
 * MOE_ECANCELED. Async-signal-safe; any thread. */
MOE_API void moe_session_cancel(moe_session *s);
/* With fp: one JSON line per token and MoE layer (its experts and router scores),
 * the trace moe-bench sim replays. NULL stops. */
MOE_API void moe_session_trace(moe_session *s, FILE *fp);
/* Route every token by the routes recorded in a trace file (moe_session_trace's
 * format, e.g. of a trained model's run), mapped onto this model's layers and
 * experts, and compute everything else for real: cache, prefetch and disk figures
 * of a large synthetic model then see real routing's locality. The output is not
 * the model's. NULL stops. MOE_EIO/MOE_EFORMAT for an unreadable trace. */
MOE_API int moe_session_routes_from(moe_session *s, const char *path);

/* ---- text --------------------------------------------------------------------- */

/* A tokenizer.json, with the tokenizer_config.json beside it if there is one;
 * *chat_template (if not NULL) gets that file's template, malloc'd, or NULL. */
MOE_API int moe_tokenizer_open(const char *path, moe_tokenizer **out, char **chat_template);
/* A pack's tokenizer (MOE_ENOTFOUND if it has none), without opening the model;
 * *chat_template (if not NULL) gets the pack's template, else the built-in one of
 * its family, malloc'd, or NULL. */
MOE_API int moe_pack_tokenizer(const moe_pack *pack, moe_tokenizer **out, char **chat_template);
MOE_API void moe_tokenizer_free(moe_tokenizer *t);
MOE_API size_t moe_tokenizer_vocab(const moe_tokenizer *t);
/* Ids that end generation; *ids valid as long as t. */
MOE_API size_t moe_tokenizer_eos(const moe_tokenizer *t, const int32_t **ids);
MOE_API int32_t moe_tokenizer_bos(const moe_tokenizer *t); /* -1 if none */
/* The token as the tokenizer spells it; NULL if no such id. */
MOE_API const char *moe_tokenizer_token(const moe_tokenizer *t, int32_t id, size_t *len);
/* UTF-8 text to ids (Hugging Face's); with add_special, the BOS/EOS its
 * post-processor adds. *ids malloc'd. Text that is not UTF-8 is read as Python's
 * decode("utf-8", "replace") reads it. */
MOE_API int moe_tokenize(const moe_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
			 size_t *n);
/* Ids to UTF-8, malloc'd and NUL-terminated; MOE_EINVAL for an id out of range. */
MOE_API int moe_detokenize(const moe_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
			   size_t *len);
/* Streaming decode: one id in, the text it completes out; never part of a UTF-8
 * character, and everything out concatenates to moe_detokenize's text. */
typedef struct moe_detokenizer moe_detokenizer;
MOE_API int moe_detokenizer_new(const moe_tokenizer *t, int skip_special, moe_detokenizer **out);
/* *text valid until the next call on d. */
MOE_API int moe_detokenizer_push(moe_detokenizer *d, int32_t id, const char **text, size_t *len);
/* What is held back at the end (an unfinished character, as U+FFFD). */
MOE_API int moe_detokenizer_finish(moe_detokenizer *d, const char **text, size_t *len);
MOE_API void moe_detokenizer_free(moe_detokenizer *d);

/*
 * A chat prompt: messages_json (a JSON array of {"role", "content"}) rendered by
 * the Jinja2 template tmpl as transformers' apply_chat_template renders it, with
 * t's BOS/EOS as bos_token/eos_token, add_generation_prompt, and the variables of
 * kwargs_json (an object, or NULL). The text carries its special tokens: tokenize
 * it without add_special. *text malloc'd. Errors name the template line.
 */
MOE_API int moe_chat_prompt(const moe_tokenizer *t, const char *tmpl, const char *messages_json,
			    const char *kwargs_json, int add_generation_prompt, char **text, size_t *len);
/* Templates by name for files that carry none: "mistral-v1", "chatml"; else NULL. */
MOE_API const char *moe_chat_template_builtin(const char *name);

/* ---- sampling and stopping ---------------------------------------------------- */

typedef struct moe_sampler_params {
	double temperature;     /* 0 (default): greedy */
	size_t top_k;           /* keep the k likeliest (default 40; 0: all) */
	double top_p;           /* keep the smallest set with probability >= top_p (default 1) */
	double min_p;           /* drop tokens below min_p x the top probability (default 0) */
	double repeat_penalty;  /* divide the logits of tokens in the history, once each (default 1) */
	uint64_t seed;          /* the sampler's own RNG (default 1): same seed, same tokens */
} moe_sampler_params;
typedef struct moe_sampler moe_sampler;
MOE_API void moe_sampler_params_init(moe_sampler_params *p);
/* MOE_EINVAL for a parameter out of range (temperature < 0, top_p not in (0, 1], ...). */
MOE_API int moe_sampler_new(const moe_sampler_params *p, moe_sampler **out);
/* A token from n_vocab logits (left unchanged); history: the tokens the
 * repetition penalty looks at. -1 only if out of memory. */
MOE_API int32_t moe_sampler_sample(moe_sampler *sp, const float *logits, size_t n_vocab, const int32_t *history,
				   size_t n_history);
MOE_API void moe_sampler_free(moe_sampler *sp);

/* Stop strings: generated text in, the part that is safe to show out; what could be
 * the start of a stop string is held back until it is not. */
typedef struct moe_stopper moe_stopper;
/* stops: n non-empty strings (copied). */
MOE_API int moe_stopper_new(const char *const *stops, size_t n, moe_stopper **out);
/* Add text; *out and *out_len: the text to show now (valid until the next call). final:
 * no more text follows, show all. Returns 1 once a stop string is complete (out ends
 * before it; nothing more should be generated), 0 if not, MOE_ENOMEM. */
MOE_API int moe_stopper_push(moe_stopper *st, const char *text, size_t len, int final, const char **out,
			     size_t *out_len);
MOE_API void moe_stopper_free(moe_stopper *st);

#ifdef __cplusplus
}
#endif
#endif /* MOE_H */
