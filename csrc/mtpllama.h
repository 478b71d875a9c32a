/* mtpllama C API: the one declaration of the engine's surface.
 *
 * Read verbatim by the Python binding as its cffi cdef, so this file holds only
 * opaque handles, fixed-width scalars, plain structs and prototypes: no macros,
 * no includes, no C++.  (Lines starting with '#' are dropped by the binding.)
 *
 * Every call returns an mtpl_status; on failure mtpl_last_error() gives a
 * message for the calling thread that a user can act on.
 */
#pragma once

typedef struct mtpl_model mtpl_model;
typedef struct mtpl_session mtpl_session;
typedef struct mtpl_group mtpl_group;

enum mtpl_status {
    MTPL_OK = 0,
    MTPL_ERR_INVALID_ARGUMENT = 1,
    MTPL_ERR_FILE_NOT_FOUND = 2,
    MTPL_ERR_NOT_GGUF = 3,
    MTPL_ERR_MODEL_LOAD = 4,
    MTPL_ERR_UNSUPPORTED_ARCH = 5,
    MTPL_ERR_NO_MTP_HEAD = 6,
    MTPL_ERR_CONTEXT_FULL = 7,
    MTPL_ERR_DECODE = 8,
    MTPL_ERR_BUSY = 9,
    MTPL_ERR_CANCELLED = 10,
    MTPL_ERR_BUFFER_TOO_SMALL = 11,
    MTPL_ERR_INTERNAL = 12,
    MTPL_ERR_MTP_MISMATCH = 13,    /* the MTP head file does not belong to the trunk's model */
    MTPL_ERR_NO_CHAT_TEMPLATE = 14, /* the model file has no chat template (tokenizer.chat_template) */
    MTPL_ERR_CHAT_TEMPLATE = 15,   /* the chat template does not parse, or failed to render these messages */
    MTPL_ERR_CHAT_PARSE = 16,      /* generated text does not match the parser of the chat format */
    MTPL_ERR_NO_BACKEND = 17       /* this build has no such backend (e.g. CUDA in a CPU-only build) */
};

/* Why a generation step stopped emitting tokens. */
enum mtpl_stop {
    MTPL_STOP_NONE = 0,      /* more tokens may follow */
    MTPL_STOP_EOS = 1,       /* an end-of-generation token (EOS, EOT, ...) was emitted (it is the last one) */
    MTPL_STOP_LENGTH = 2,    /* the step's token budget is used up */
    MTPL_STOP_CONTEXT = 3    /* the context window is full */
};

/* Log levels passed to the log callback (ggml's numbering). */
enum mtpl_log_level {
    MTPL_LOG_DEBUG = 1,
    MTPL_LOG_INFO = 2,
    MTPL_LOG_WARN = 3,
    MTPL_LOG_ERROR = 4
};

typedef void (*mtpl_log_fn)(int32_t level, const char * text, void * user_data);

/* The largest draft length a step accepts; stats keep one slot per draft position. */
enum { MTPL_MAX_DRAFT = 16 };
/* Buckets of the MTP head's confidence in which the controller counts acceptance. */
enum { MTPL_CONF_BUCKETS = 12 };
/* sampled decoding: the draft distribution mixtures the controller chooses from, q = m * [the head's
   arg-max] + (1 - m) * the head's distribution, m from 0 (index 0: rejection sampling from the head's
   distribution at the sampling temperature) to 1 (index MTPL_N_MIX - 1: its arg-max, which accepts
   as often as exact-match verification) */
enum { MTPL_N_MIX = 5 };

typedef struct mtpl_model_params {
    const char * path;
    int32_t mtp;                    /* 1: load the NextN (MTP) block; 0: skip its tensors entirely */
    int32_t n_gpu_layers;           /* layers to offload; -1 = all */
    const char * tensor_overrides;  /* newline-separated "regex=DEVICE" rules (llama.cpp -ot), or NULL */
    int32_t use_mmap;               /* 1: memory-map the file */
    const char * mtp_path;          /* an MTP-only file holding the NextN block (NULL: the head is in path) */
    const char * mtp_device;        /* device for the NextN block, its KV cache and compute ("CPU", "CUDA0", an
                                       RPC device); NULL: placed by n_gpu_layers like the last trunk layer */
    const char * rpc_servers;       /* newline-separated "HOST:PORT" of mtpllama-rpc-server workers whose devices
                                       (RPC0, RPC1, ... in order) take layers before local GPUs; NULL: none */
} mtpl_model_params;

typedef struct mtpl_model_info {
    char arch[64];
    char name[128];
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_embd_state;           /* floats in a trunk state handed to the MTP head: n_embd, or wider
                                       (DeepSeek-V4's hyper-connection lanes) */
    int32_t n_layer;                /* trunk layers (without NextN blocks) */
    int32_t n_layer_nextn;          /* nextn_predict_layers declared by the file */
    int32_t n_ctx_train;
    int32_t file_has_mtp;           /* the file holds usable NextN tensors */
    int32_t mtp_loaded;             /* the NextN block was loaded */
    int32_t n_tensors_file;         /* tensors in the GGUF file */
    int32_t n_tensors_nextn_file;   /* of which belong to NextN blocks */
    int32_t token_eos;
    int64_t model_bytes;            /* bytes of the tensors in the file (llama.cpp's model size) */
    int64_t nextn_bytes_file;       /* bytes of NextN tensors in the file */
    int64_t n_params;               /* parameters loaded */
    int32_t mtp_separate;           /* the NextN block came from mtp_path */
    char mtp_device[64];            /* the device the NextN block runs on ("" when it is not loaded) */
    int32_t recurrent;              /* the trunk keeps a recurrent state (rejected drafts restore snapshots) */
} mtpl_model_info;

typedef struct mtpl_session_params {
    int32_t n_ctx;                  /* context length in tokens; 0 = min(4096, training context) */
    int32_t n_batch;                /* prompt chunk size; 0 = 512 */
    int32_t n_threads;              /* 0 = all cores */
    int32_t mtp;                    /* 1: keep an MTP context and draft with it */
} mtpl_session_params;

/* How sampled drafts are verified. */
enum mtpl_verify {
    MTPL_VERIFY_REJECTION = 0,      /* rejection sampling: lossless in distribution, accepts the most */
    MTPL_VERIFY_EXACT = 1,          /* sample the trunk and compare with the (arg-max) draft, as upstream does */
    MTPL_VERIFY_TEST_ACCEPT_ALL = 2, /* a test hook, not lossless: trust every draft (the statistical tests' power) */
    MTPL_VERIFY_COUPLED = 3         /* Gumbel-max sampling keyed by (seed, position): drafts and trunk share the
                                       noise, so the output equals plain sampling with the same seed, token for
                                       token, whatever the draft lengths */
};

typedef struct mtpl_gen_params {
    int32_t draft_max;              /* most tokens drafted per step, 0..MTPL_MAX_DRAFT */
    float draft_p_min;              /* stop drafting where the head's top probability is below this (0: no floor) */
    float temperature;              /* <= 0: greedy (arg-max); sampling otherwise */
    int32_t top_k;                  /* keep the k most likely tokens; 0 = off */
    float top_p;                    /* keep the smallest set with this much mass; 1 = off */
    float min_p;                    /* drop tokens below min_p * (top probability); 0 = off */
    float repeat_penalty;           /* 1 = off */
    float presence_penalty;         /* 0 = off */
    float frequency_penalty;        /* 0 = off */
    int32_t penalty_last_n;         /* context tokens the penalties look at; 0 = off, -1 = all */
    uint64_t seed;                  /* the session's random generator is reseeded by mtpl_session_configure */
    int32_t verify;                 /* enum mtpl_verify */
    float draft_temperature;        /* rejection sampling: temperature of the draft distribution q (< 0: the
                                       sampling temperature; 0: arg-max drafts); any q is lossless */
    int32_t adaptive;               /* 1: the controller chooses, draft by draft, how deep a step drafts
                                       (0..draft_max), and the draft distribution's mixture (with
                                       draft_temperature < 0); 0: draft_max drafts every step */
} mtpl_gen_params;

/* Result of one draft + verify step. */
typedef struct mtpl_step_result {
    int32_t n_tokens;               /* tokens written to out_tokens */
    int32_t n_drafted;              /* drafts proposed in this step */
    int32_t n_accepted;             /* of which the trunk accepted */
    int32_t stop;                   /* enum mtpl_stop */
} mtpl_step_result;

typedef struct mtpl_stats {
    int64_t n_prompt_tokens;        /* tokens fed with mtpl_session_feed */
    int64_t n_generated;            /* tokens emitted by steps */
    int64_t n_steps;                /* trunk passes whose tokens were emitted (the prompt pass counts once) */
    int64_t n_trunk_calls;          /* trunk graph evaluations, prompt chunks included */
    int64_t n_mtp_calls;            /* MTP graph evaluations */
    int64_t drafted[MTPL_MAX_DRAFT];   /* drafts verified at position i (1-based position i+1) */
    int64_t accepted[MTPL_MAX_DRAFT];  /* drafts accepted at position i */
    int64_t drafts_per_step[MTPL_MAX_DRAFT + 1];  /* verification steps that verified k drafts, by k */
    double t_prefill_s;             /* seconds evaluating fed tokens */
    double t_draft_s;               /* seconds in the MTP head */
    double t_verify_s;              /* seconds in trunk verification passes */
    double t_other_s;               /* seconds in the step outside the three above */
    int64_t n_trunk_graphs_reused;  /* trunk evaluations that reused the previous compute graph */
    int64_t n_mtp_graphs_reused;    /* MTP evaluations that reused the previous compute graph */
    /* the controller's estimates (they live with the session, across generations) */
    double est_accept[MTPL_MAX_DRAFT];         /* acceptance at draft position i, over the head's confidences */
    double est_verify_s[MTPL_MAX_DRAFT + 1];   /* seconds of a trunk pass over k drafts (k + 1 rows); 0: unmeasured */
    double est_head_s;              /* seconds of a step's first MTP evaluation */
    double est_catch_up_s;          /* ... and what it adds per position it catches up after plain steps */
    double est_rebuild_s;           /* what a trunk pass adds when its compute graph is built anew (another row count) */
    double est_draft_s;             /* seconds of each further MTP evaluation */
    double est_other_s;             /* seconds of the rest of a step, the caller's time between steps included */
    double est_rate;                /* tokens per second of the best fixed draft length, as estimated */
    float calib_conf_lo[MTPL_CONF_BUCKETS];    /* head confidence buckets (lower edges) ... */
    double calib_accept[MTPL_CONF_BUCKETS];    /* ... the first draft's acceptance in each */
    double calib_weight[MTPL_CONF_BUCKETS];    /* ... and the (aged) drafts behind it */
    float draft_mix[MTPL_MAX_DRAFT];           /* sampled decoding: the draft distribution's mixture toward the
                                                  head's arg-max at position i (0: the head's distribution) */
    int64_t n_reevaluated;          /* context tokens mtpl_session_truncate evaluated again (the last kept one,
                                       whose logits and state the next token needs; all kept ones on an
                                       architecture with recurrent state) */
    int64_t n_stateless_passes;     /* verification passes that left out the states the MTP head drafts from
                                       (the adaptive controller had stopped drafting) */
    /* rejection sampling with the mixture learnt (draft_temperature < 0), over the verified first
       drafts (n_first_paired of them): the summed chance that each mixture would have accepted
       there, on the same rows, and that of the mixture the draft came from */
    double first_paired[MTPL_N_MIX];
    double first_paired_drawn;
    int64_t n_first_paired;
} mtpl_stats;


/* library identity, for the loader's version handshake */
const char * mtpl_version(void);
const char * mtpl_upstream_commit(void);
const char * mtpl_patches_hash(void);

/* message of the last failed call on this thread ("" if none) */
const char * mtpl_last_error(void);

/* route llama.cpp's log to fn (NULL: discard it); levels below min_level are dropped */
int32_t mtpl_set_log(mtpl_log_fn fn, void * user_data, int32_t min_level);

/* Batch invariance (process-wide, on by default): every row of a verification batch is computed
   with the same kernels as a lone row (CPU: patches/0003; CUDA: 0020), so greedy MTP output equals
   plain greedy output bit for bit.  0 turns it off: verification may then use faster batched kernels, whose last bits differ,
   and a near-tie may decide differently than plain decoding would.  Set it before decoding. */
/* release the calling thread's CPU worker threads (its OpenMP team; recreated by its next evaluation).
   libgomp lets idle teams spin only briefly once they hold more threads than there are cores, so a
   team left behind by a thread that has finished generating slows down every other thread that
   generates; mtpllama calls this when a generation ends.  A no-op without OpenMP. */
int32_t mtpl_release_threads(void);
int32_t mtpl_set_batch_invariant(int32_t enabled);
int32_t mtpl_get_batch_invariant(void);

/* Huge pages (process-wide, on by default; Linux): CPU buffers of 2 MiB and more allocated after
   the call (weights read into memory, AMX weight buffers, KV caches, compute buffers) are advised to
   the kernel as transparent huge pages (patches/0007, 0010).  A mapped file's weights are unaffected. */
int32_t mtpl_set_huge_pages(int32_t enabled);
int32_t mtpl_get_huge_pages(void);

/* The devices this build and machine offer (ggml's backend devices: "CPU", "CUDA0", ...), one line each,
   "NAME<TAB>DESCRIPTION<TAB>KIND<TAB>FREE<TAB>TOTAL\n" (KIND: cpu, gpu, igpu, accel; memory in bytes, 0 for
   an RPC worker that does not answer),
   written NUL-terminated to buf (n_out: bytes without the NUL; MTPL_ERR_BUFFER_TOO_SMALL when cap is
   too small).  These names are what tensor_overrides and mtp_device take. */
int32_t mtpl_devices(char * buf, int64_t cap, int64_t * n_out);

/* RPC workers (process-wide): a send or receive that waits longer than ms on a worker fails the call
   that needed it (MTPL_ERR_DECODE naming the worker; 0: wait forever).  Applies to connections made
   afterwards; the default is 60000. */
int32_t mtpl_set_rpc_timeout(int32_t ms);
int32_t mtpl_get_rpc_timeout(int32_t * ms);
/* Serve this machine's CPU to RPC clients at endpoint ("HOST:PORT") with n_threads threads, with the
   kernel switches mtpllama sets (batch invariance, huge pages), until the process ends; cache_dir
   (or NULL) caches tensors clients send by hash.  Returns only on failure to listen. */
int32_t mtpl_rpc_serve(const char * endpoint, int32_t n_threads, const char * cache_dir);

/* CUDA graph computations since the process started (patches/0021): launched from a reused graph,
   captured into a new or updated graph, evaluated kernel by kernel.  MTPL_ERR_NO_BACKEND without CUDA. */
int32_t mtpl_cuda_graph_counts(int64_t * reused, int64_t * captured, int64_t * direct);


/* What a GGUF file holds, as the engine sees it, without loading it (mtpl_file_inspect). */
typedef struct mtpl_file_info {
    char arch[64];                  /* general.architecture */
    char name[128];                 /* general.name */
    int32_t supported;              /* the engine runs this architecture */
    int32_t block_count;            /* <arch>.block_count: trunk and NextN blocks */
    int32_t n_layer_nextn;          /* NextN blocks declared */
    int32_t n_tensors;
    int32_t n_tensors_nextn;        /* tensors in NextN blocks */
    int64_t nextn_bytes;            /* their bytes */
    int32_t has_mtp;                /* a usable NextN block: what a model loaded with mtp = 1 needs */
    char mtp_problem[256];          /* why has_mtp is 0 */
    char kind[16];                  /* "full", "trunk-only" or "mtp-only" (the NextN block and the tensors it shares) */
    char attention[160];            /* the attention kind and its shape, e.g. "MLA: 20 heads, q_lora_rank 768, ..." */
} mtpl_file_info;

/* describe a GGUF file; fails as mtpl_model_load would on a missing, corrupt or inconsistent file
   (a file of an unsupported architecture is described, with supported = 0) */
int32_t mtpl_file_inspect(const char * path, mtpl_file_info * out);

/* load a GGUF file of a supported architecture; validates it before llama.cpp sees it */
int32_t mtpl_model_load(const mtpl_model_params * params, mtpl_model ** out);
/* free a model; fails with MTPL_ERR_BUSY while sessions on it are open */
int32_t mtpl_model_free(mtpl_model * model);
int32_t mtpl_model_get_info(const mtpl_model * model, mtpl_model_info * out);
/* a string metadata value (e.g. "tokenizer.chat_template"); *n_out = its length, -1 if absent */
int32_t mtpl_model_meta(const mtpl_model * model, const char * key, char * buf, int32_t cap, int32_t * n_out);

/* text <-> tokens; *n_out is the needed size when cap is too small (MTPL_ERR_BUFFER_TOO_SMALL) */
int32_t mtpl_tokenize(const mtpl_model * model, const char * text, int32_t text_len, int32_t add_special,
                      int32_t parse_special, int32_t * out, int32_t cap, int32_t * n_out);
int32_t mtpl_detokenize(const mtpl_model * model, const int32_t * tokens, int32_t n_tokens, char * buf,
                        int32_t cap, int32_t * n_out);
/* all token pieces (special tokens render empty), concatenated; offsets has n_vocab + 1 entries */
int32_t mtpl_vocab_pieces(const mtpl_model * model, char * buf, int64_t cap, int64_t * offsets, int64_t * n_out);
int32_t mtpl_token_is_eog(const mtpl_model * model, int32_t token, int32_t * out);

/* a session: trunk context (+ MTP context when params->mtp) with their KV caches */
int32_t mtpl_session_new(mtpl_model * model, const mtpl_session_params * params, mtpl_session ** out);
int32_t mtpl_session_free(mtpl_session * session);
/* drop everything in the context */
int32_t mtpl_session_reset(mtpl_session * session);
/* evaluate tokens after the current context and choose the next token (as the last configure says:
   greedy or sampled); the next step emits it */
int32_t mtpl_session_feed(mtpl_session * session, const int32_t * tokens, int32_t n_tokens);
/* set drafting and sampling for the following steps (a generation starts: clears a pending cancel) */
int32_t mtpl_session_configure(mtpl_session * session, const mtpl_gen_params * params);
/* one step: draft with the MTP head, verify with the trunk, emit 1..draft_max+1 tokens (at most n_max) */
int32_t mtpl_session_step(mtpl_session * session, int32_t n_max, int32_t * out_tokens, int32_t cap,
                          mtpl_step_result * result);
/* keep only the first n_keep tokens of the context (both KV caches roll back) */
int32_t mtpl_session_truncate(mtpl_session * session, int32_t n_keep);
/* A group's session about to take tokens as its whole context: where another session of the group
   holds a longer prefix of tokens in its cache than this one (by enough to outweigh copying that
   session's cache entries), copy them into this session's sequence and keep that prefix, as
   mtpl_session_truncate would keep its own.  *n_kept: the prefix now held (at most n_tokens - 1;
   feed tokens[*n_kept:] next), or 0 where nothing was copied and the context is as it was.  A lone
   session, and files with sliding-window attention, copy nothing. */
int32_t mtpl_session_adopt_prefix(mtpl_session * session, const int32_t * tokens, int32_t n_tokens,
                                  int32_t * n_kept);
/* tokens in the context, including the chosen-but-unevaluated next token */
int32_t mtpl_session_tokens(const mtpl_session * session, int32_t * out, int32_t cap, int32_t * n_out);
int32_t mtpl_session_n_ctx(const mtpl_session * session, int32_t * out);
/* bytes allocated by llama.cpp for this session's model weights, KV caches and compute buffers
   (all devices; weights are those actually loaded, so a model loaded with mtp=0 has no NextN bytes) */
int32_t mtpl_session_memory(const mtpl_session * session, int64_t * weights, int64_t * kv, int64_t * compute);
/* the same per buffer type, for the trunk context (mtp = 0) or the MTP context (mtp = 1): one line per buffer
   type, "NAME<TAB>weights<TAB>kv<TAB>compute\n", written NUL-terminated to buf (n_out: bytes without the NUL;
   MTPL_ERR_BUFFER_TOO_SMALL when cap is too small).  The MTP context lists the weights it computes with. */
int32_t mtpl_session_memory_by_buffer(const mtpl_session * session, int32_t mtp, char * buf, int64_t cap,
                                      int64_t * n_out);
int32_t mtpl_session_get_stats(const mtpl_session * session, mtpl_stats * out);
int32_t mtpl_session_reset_stats(mtpl_session * session);
/* ask the running (or next) feed/step of this session to stop soon (thread-safe): that call returns
   MTPL_ERR_CANCELLED within one graph evaluation and leaves the session consistent */
int32_t mtpl_session_cancel(mtpl_session * session);

/* --- several sequences: a group's sessions share one trunk context (a KV stream each) and verify
   their drafts in one trunk pass per step ------------------------------------------------------- */

enum { MTPL_MAX_GROUP = 64 };

typedef struct mtpl_group_params {
    mtpl_session_params session;    /* each sequence's: n_ctx (per sequence), n_batch, n_threads, mtp */
    int32_t n_seq;                  /* sequences, 1..MTPL_MAX_GROUP */
    int32_t exact;                  /* 1: every row of a group pass is computed as a lone row (the batch-invariant
                                       kernels cover n_seq * (MTPL_MAX_DRAFT + 1) rows during group passes), so a
                                       sequence's output does not depend on the others'; 0: batches of more than
                                       MTPL_MAX_DRAFT + 1 rows take llama.cpp's batched kernels */
    int32_t no_cap;                 /* 1: every session drafts as its own settings say; 0: the group caps the drafts
                                       per step at the length that gives the most tokens per second for so many
                                       sessions (learned as it goes) */
} mtpl_group_params;

typedef struct mtpl_group_stats {
    int64_t n_passes;               /* trunk passes of mtpl_group_step */
    int64_t n_seq_steps;            /* session steps they verified */
    int64_t n_rows;                 /* rows they evaluated (pending tokens and drafts) */
    int64_t n_pad_rows;             /* rows added so that every sequence has as many (llama.cpp evaluates a
                                       multi-stream batch in one graph only then) */
    int64_t n_ubatches;             /* graph evaluations those passes took */
    int64_t n_capped;               /* session steps whose draft length the group capped below their draft_max
                                       (the cap that gives the most tokens per second for so many sessions) */
    double t_pass_s;                /* seconds in those passes */
} mtpl_group_stats;

/* a group of params->n_seq sessions on one trunk context; fails for architectures with recurrent
   trunk state (not supported in groups yet) */
int32_t mtpl_group_new(mtpl_model * model, const mtpl_group_params * params, mtpl_group ** out);
/* free the group and its sessions (MTPL_ERR_BUSY while one of them is in use) */
int32_t mtpl_group_free(mtpl_group * group);
/* session i of the group (owned by the group: mtpl_session_free refuses it).  Every mtpl_session_*
   call works on it, one sequence at a time; calls on the group's sessions take turns. */
int32_t mtpl_group_session(mtpl_group * group, int32_t i, mtpl_session ** out);
/* one step of n distinct sessions of the group: each drafts, then one trunk pass verifies every
   session's drafts.  Session i's tokens go to out_tokens + i * cap (cap >= MTPL_MAX_DRAFT + 2), its
   result to results[i] and its status to statuses[i] (as mtpl_session_step would return it).
   Returns MTPL_OK, or the first failing session's status (its message is the last error). */
int32_t mtpl_group_step(mtpl_group * group, int32_t n, mtpl_session * const * sessions, const int32_t * n_max,
                        int32_t * out_tokens, int32_t cap, mtpl_step_result * results, int32_t * statuses);
int32_t mtpl_group_get_stats(const mtpl_group * group, mtpl_group_stats * out);

/* --- chat: llama.cpp's own chat code (common/chat.cpp), run as llama-server runs it ------------ */

/* One rendered chat request: its prompt and the parser of the reply.  It does not keep the model. */
typedef struct mtpl_chat mtpl_chat;

/* Render a chat request with the model's chat template (tokenizer.chat_template), as llama-server's
   /v1/chat/completions does.  request_json is an object: "messages" (required: OpenAI messages),
   "tools", "tool_choice" ("auto", "none", "required"), "parallel_tool_calls" (default: what the
   template supports), "add_generation_prompt" (default true), "continue_final_message",
   "chat_template_kwargs" (an object; "enable_thinking" there overrides), "enable_thinking" (a bool;
   default: whether the template can think), "reasoning_effort", "reasoning_format" ("none", "auto",
   "deepseek" (the default) or "deepseek-legacy").  A trailing assistant message is continued, as
   llama-server does.  Fails with MTPL_ERR_NO_CHAT_TEMPLATE, MTPL_ERR_INVALID_ARGUMENT (a malformed
   request or message) or MTPL_ERR_CHAT_TEMPLATE (the template raised or does not parse). */
int32_t mtpl_chat_render(mtpl_model * model, const char * request_json, mtpl_chat ** out);
/* the rendering as a JSON object: "prompt", "generation_prompt", "format", "enable_thinking",
   "supports_thinking", "thinking_start_tag", "thinking_end_tags", "additional_stops",
   "preserved_tokens", "caps" (the template's capabilities); *text (NUL-terminated, *n_text bytes)
   stays valid until the next call on chat */
int32_t mtpl_chat_info(mtpl_chat * chat, const char ** text, int64_t * n_text);
/* parse the generated text (all of it since the prompt) into the assistant message, as OpenAI JSON:
   "role", "content", "reasoning_content" (when there is some), "tool_calls" ([{"type", "function":
   {"name", "arguments"}}], when there are some); is_partial: more text may follow (streaming).
   *text stays valid until the next call on chat.  One thread at a time per chat. */
int32_t mtpl_chat_parse(mtpl_chat * chat, const char * generated, int64_t n_generated, int32_t is_partial,
                        const char ** text, int64_t * n_text);
int32_t mtpl_chat_free(mtpl_chat * chat);

/* --- test hooks: for the test suite and tuning tools, not for applications ------------------- */

/* Debug event log (tests only; costs one branch per row when off).  Every row a
   session evaluates in either context is recorded with its inputs and outputs,
   and every rollback of a cache, so a reference implementation can replay the
   exact cache contents: numerical checks of the real generation path. */
enum mtpl_debug_kind {
    MTPL_DEBUG_TRUNK_ROW = 0,       /* trunk evaluated token at pos; logits if output; h_out = state handed to MTP */
    MTPL_DEBUG_MTP_ROW = 1,         /* MTP block evaluated (token, h_in) at pos; logits and h_out if output */
    MTPL_DEBUG_TRUNK_FORGET = 2,    /* trunk cache dropped positions >= pos */
    MTPL_DEBUG_MTP_FORGET = 3,      /* MTP cache dropped positions >= pos */
    MTPL_DEBUG_RESET = 4            /* both caches cleared */
};

typedef struct mtpl_debug_event {
    int32_t kind;
    int32_t pos;
    int32_t token;
    int32_t call;                   /* index of the graph evaluation (rows of one batch share it) */
    int64_t h_in;                   /* offset of n_embd_state floats in the float arena, or -1 */
    int64_t logits;                 /* offset of n_vocab floats, or -1 */
    int64_t h_out;                  /* offset of n_embd_state floats, or -1 */
} mtpl_debug_event;

/* start (1, clearing the log) or stop (0) recording debug events */
int32_t mtpl_session_debug(mtpl_session * session, int32_t enable);
int32_t mtpl_session_debug_events(const mtpl_session * session, mtpl_debug_event * out, int32_t cap, int32_t * n_out);
int32_t mtpl_session_debug_floats(const mtpl_session * session, float * out, int64_t cap, int64_t * n_out);

/* The controller against a simulated model, without any model: for tests and tuning of its policy.
   Each step the controller plans.  A drafting step pays head_s, then draft i (0-based) comes with
   head confidence c ~ U[conf_lo[i], conf_hi[i]] and would be accepted (the drafts before it
   accepted) with probability clamp(accept[i] + slope[i] (c - (conf_lo[i] + conf_hi[i]) / 2), 0, 1);
   the controller keeps it or ends drafting, and each further draft costs draft_s.  The trunk pass
   over k drafts costs verify_s[k], the rest of a step other_s.  Every step's time is multiplied by
   1 + noise N(0, 1) (at least 0.5); from step switch_step on acceptance is accept_after[i] and times
   are multiplied by speed_after (0: unchanged), during a slow spell of burst_steps steps by
   burst_speed.  With text_steps > 0 a new text begins every text_steps steps (the controller is
   told, as on a session reset) and texts alternate between accept and accept_after (switch_step
   is then not used).  After plain steps the head call also catches up catch_up_s per missed
   position.
   adaptive = 0 simulates the fixed policy instead: k_max drafts a step, none below p_min.
   out_drafts[step] receives the drafts verified in each step; *out_tokens, *out_seconds the totals. */
typedef struct mtpl_controller_sim {
    int32_t k_max;                  /* 0..MTPL_MAX_DRAFT */
    int32_t n_steps;
    int32_t adaptive;
    float p_min;
    double verify_s[MTPL_MAX_DRAFT + 1];
    double head_s;
    double draft_s;
    double other_s;
    double catch_up_s;
    double states_s;                /* what a trunk pass adds when it reports the states the head drafts from */
    double noise;
    double conf_lo[MTPL_MAX_DRAFT];
    double conf_hi[MTPL_MAX_DRAFT];
    double accept[MTPL_MAX_DRAFT];
    double slope[MTPL_MAX_DRAFT];
    double accept_after[MTPL_MAX_DRAFT];
    int32_t switch_step;            /* -1: never */
    double speed_after;
    int32_t burst_start;
    int32_t burst_steps;
    double burst_speed;
    int32_t text_steps;             /* 0: one text */
    uint64_t seed;
} mtpl_controller_sim;
int32_t mtpl_controller_simulate(const mtpl_controller_sim * sim, int32_t * out_drafts, double * out_tokens,
                                 double * out_seconds);

/* Recurrent trunks: with skip = 1 the session drops rejected positions without restoring the
   recurrent state to a snapshot (not lossless: what a missing rollback does). */
int32_t mtpl_test_skip_rollback(mtpl_session * session, int32_t skip);

/* With every > 0, every every-th verification pass leaves out the states the MTP head drafts from,
   whatever the controller says, and the step after it cannot draft: a gap in the MTP cache
   (a plain step far from drafting does this where it pays).  0: as the controller says. */
int32_t mtpl_test_states_gap_every(mtpl_session * session, int32_t every);
/* Seed the group's draft cap bandit (group.cpp) for steps of n_seq sessions: as if caps 0 to
   n_caps - 1 had each been measured for a second at tokens_per_s[c] (later steps add to it). */
int32_t mtpl_test_group_cap_rates(mtpl_group * group, int32_t n_seq, const double * tokens_per_s, int32_t n_caps);
/* NextN block `head`'s MTP cache entries in MTP position order: the trunk position and token each
   pairs (the session's bookkeeping, for tests).  Writes min(*n_out, cap) of them; *n_out: how many
   there are. */
int32_t mtpl_test_mtp_entries(const mtpl_session * session, int32_t head, int32_t * trunk_pos, int32_t * tokens,
                              int32_t cap, int32_t * n_out);

/* Verification alone, on hand-made rows: n_drafts + 1 trunk logit rows (row i follows
   tokens[0, n_before + i)), tokens[n_before, n_before + n_drafts) the drafts, q_probs the dense
   draft distributions (n_drafts rows of n_vocab probabilities; read by rejection sampling only,
   may be NULL otherwise), with a generator seeded by seed.  Returns the drafts accepted and the
   next token. */
int32_t mtpl_test_verify(const float * rows, int32_t n_vocab, const int32_t * tokens, int32_t n_before,
                         int32_t n_drafts, const float * q_probs, const mtpl_gen_params * params, uint64_t seed,
                         int32_t * n_accepted, int32_t * next);
