/* pack.h - moe-pack's jobs: pack a source, describe a pack, verify a pack. */
#ifndef MOE_TOOLS_PACK_H
#define MOE_TOOLS_PACK_H

#include <signal.h>
#include <stdint.h>

#include "model/arch.h"
#include "source.h"

#define PACK_KEEP (-2) /* --quant keep: the source's own type where lossless */
#define PACK_AUTO (-3) /* the default: quantized sources keep their types, float ones become q8 */

struct pack_options {
	int quant[MOE_KIND_COUNT];   /* pack type per tensor kind (norm, router: always f32) */
	char quant_desc[160];        /* as given, for provenance */
	int mix;                     /* a llama.cpp K-quant mix (pack.c), or 0 */
	uint32_t alignment;          /* expert blob alignment */
	int zstd_level;
	double zstd_min_saving;      /* percent; a frame is kept only if it saves at least this */
	int threads;
	int force;
	int progress;                /* draw a progress bar on stderr */
	const char *tokenizer_path;  /* --tokenizer: overrides the source's tokenizer.json */
	uint64_t memory_budget;      /* bytes for expert blobs in flight */
};

void pack_options_default(struct pack_options *o);
/* "auto", "q8", "q4", "keep", a GGUF block type, or a list "experts=q4,attn=q8,embed=f16"; message names the bad part. */
int pack_parse_quant(const char *spec, struct pack_options *o);
/* Import src into a new pack at out. Prints a one-paragraph summary to stdout. */
int pack_model(struct moe_source *src, const char *out, const struct pack_options *o);

/* The sizes a pack of these hyperparameters would have (resident, experts, KV per
 * 1K tokens, least budget at 4K context), printed; nothing is written. */
int pack_plan(const struct moe_hparams *hp, const struct pack_options *o);

/* moe-pack --info and --verify */
int pack_info(const char *path, int json);
int pack_verify(const char *path, int progress);

/* Set by moe-pack's SIGINT/SIGTERM handler. The writers check it at every tensor
 * and expert (pack_interrupt_check: MOE_EINVAL "interrupted", else 0) and then
 * remove what they were writing, as on any other error. */
extern volatile sig_atomic_t pack_interrupted;
int pack_interrupt_check(void);

/* synthetic models and the exporters moe-pack synth writes them with */
struct synth_options {
	const char *preset;
	struct moe_hparams hp;       /* preset, then overrides */
	uint64_t seed;
};
int synth_preset(const char *name, struct moe_hparams *hp);
void synth_list_presets(void);
int synth_source(const struct moe_hparams *hp, uint64_t seed, struct moe_source **out);
int st_write_folder(struct moe_source *src, const char *dir, const char *dtype, uint64_t shard_bytes, int force);
int gguf_write_model(struct moe_source *src, const char *path, const char *dtype, int force);

#endif
