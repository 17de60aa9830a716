/* main.c - moe-pack: command line. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/stdout.h"
#include "common/error.h"
#include "common/fileio.h"
#include "pack.h"
#include "pack/format.h"

static void usage(FILE *fp)
{
	fputs("usage: moe-pack [options] SOURCE OUT.moe     pack a GGUF file or a Hugging Face folder\n"
	      "       moe-pack --info [--json] PACK.moe     describe a pack\n"
	      "       moe-pack --verify PACK.moe            recompute every checksum\n"
	      "       moe-pack synth [options] OUT          make a deterministic random model\n"
	      "\n"
	      "packing:\n"
	      "  -q, --quant RECIPE       types per tensor kind: auto (default: quantized GGUF tensors keep\n"
	      "                           their types, others become q8), q8, q4, f16, bf16, f32, keep,\n"
	      "                           q2_k, q3_k, q4_k, q5_k, q6_k (from any source), a GGUF block\n"
	      "                           type kept as it is (q4_1, q5_0, q5_1, iq4_nl, iq4_xs, mxfp4), a list\n"
	      "                           like experts=q4_k,attn=q8,embed=f16 (norms, routers: f32), or\n"
	      "                           llama.cpp's mix q2_k_m, q3_k_m, q4_k_m or q5_k_m\n"
	      "      --align 4K|2M        alignment of expert blobs (default 4K)\n"
	      "      --zstd-level N       zstd level for expert blobs, 1..19 (default 3)\n"
	      "      --zstd-min-saving P  keep a zstd frame only if it saves P percent (default 25; 100: never)\n"
	      "  -j, --threads N          worker threads (default: all cores)\n"
	      "      --memory SIZE        memory for expert blobs in flight (default 512M)\n"
	      "      --tokenizer FILE     embed this tokenizer.json (replaces the source's, a GGUF's too)\n"
	      "  -f, --force              replace an OUT moe-pack wrote (never a source)\n"
	      "      --no-progress        no progress bar (there is none when stderr is not a terminal)\n"
	      "      --info               describe PACK: metadata, tensor kinds, compression ratios\n"
	      "      --json               with --info: machine-readable output\n"
	      "      --verify             check every checksum of PACK; names the layer and expert at fault\n"
	      "\n"
	      "synth (also takes the packing options when --format is pack):\n"
	      "      --preset NAME        starting shape (default mixtral-tiny); --list-presets shows them\n"
	      "      --list-presets       print the presets\n"
	      "      --layers N  --hidden N  --heads N  --kv-heads N  --head-dim N  --vocab N\n"
	      "      --experts N  --top-k N  --expert-ff N  --dense-ff N\n"
	      "                           override the preset's shape\n"
	      "      --mlp-only-layers L  Qwen3-MoE: comma-separated layers that are dense MLPs\n"
	      "      --seed N             random seed (default 1)\n"
	      "      --format F           pack (default), safetensors (a folder), gguf, or plan: print the\n"
	      "                           sizes such a pack would have (resident, experts, KV) and write nothing\n"
	      "      --dtype T            source weights: safetensors f32|f16|bf16|f8 (default bf16),\n"
	      "                           gguf f32|f16|bf16|q8_0|q4_0 (default f16)\n"
	      "      --shard-size SIZE    safetensors: start a new shard past SIZE bytes (e.g. 2G)\n"
	      "\n"
	      "  -h, --help               this text\n"
	      "  -V, --version            version\n"
	      "See moe-pack(1) and moepack(5).\n",
	      fp);
}

enum {
	OPT_ALIGN = 256, OPT_ZLEVEL, OPT_ZSAVE, OPT_MEMORY, OPT_TOKENIZER, OPT_NOPROGRESS, OPT_INFO, OPT_JSON, OPT_VERIFY,
	OPT_PRESET, OPT_LIST, OPT_LAYERS, OPT_HIDDEN, OPT_HEADS, OPT_KVHEADS, OPT_HEADDIM, OPT_VOCAB, OPT_EXPERTS,
	OPT_TOPK, OPT_EFF, OPT_DFF, OPT_SEED, OPT_FORMAT, OPT_DTYPE, OPT_SHARD, OPT_MLPONLY,
};

static const struct option long_opts[] = {
	{"quant", required_argument, NULL, 'q'},
	{"align", required_argument, NULL, OPT_ALIGN},
	{"zstd-level", required_argument, NULL, OPT_ZLEVEL},
	{"zstd-min-saving", required_argument, NULL, OPT_ZSAVE},
	{"threads", required_argument, NULL, 'j'},
	{"memory", required_argument, NULL, OPT_MEMORY},
	{"tokenizer", required_argument, NULL, OPT_TOKENIZER},
	{"force", no_argument, NULL, 'f'},
	{"no-progress", no_argument, NULL, OPT_NOPROGRESS},
	{"info", no_argument, NULL, OPT_INFO},
	{"json", no_argument, NULL, OPT_JSON},
	{"verify", no_argument, NULL, OPT_VERIFY},
	{"preset", required_argument, NULL, OPT_PRESET},
	{"list-presets", no_argument, NULL, OPT_LIST},
	{"layers", required_argument, NULL, OPT_LAYERS},
	{"hidden", required_argument, NULL, OPT_HIDDEN},
	{"heads", required_argument, NULL, OPT_HEADS},
	{"kv-heads", required_argument, NULL, OPT_KVHEADS},
	{"head-dim", required_argument, NULL, OPT_HEADDIM},
	{"vocab", required_argument, NULL, OPT_VOCAB},
	{"experts", required_argument, NULL, OPT_EXPERTS},
	{"top-k", required_argument, NULL, OPT_TOPK},
	{"expert-ff", required_argument, NULL, OPT_EFF},
	{"dense-ff", required_argument, NULL, OPT_DFF},
	{"seed", required_argument, NULL, OPT_SEED},
	{"mlp-only-layers", required_argument, NULL, OPT_MLPONLY},
	{"format", required_argument, NULL, OPT_FORMAT},
	{"dtype", required_argument, NULL, OPT_DTYPE},
	{"shard-size", required_argument, NULL, OPT_SHARD},
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, 'V'},
	{NULL, 0, NULL, 0},
};

static int fail(int rc)
{
	fprintf(stderr, "moe-pack: %s\n", moe_last_error()[0] ? moe_last_error() : moe_strerror(rc));
	return pack_interrupted ? 128 + (int)pack_interrupted : 1;
}

/* The first SIGINT/SIGTERM asks the writers to stop and remove their temporary
 * output (within one tensor or expert); a second ends at once. */
static void on_signal(int sig)
{
	if (pack_interrupted)
		_exit(128 + sig);
	pack_interrupted = sig;
}

static int usage_error(const char *fmt, const char *arg)
{
	fputs("moe-pack: ", stderr);
	fprintf(stderr, fmt, arg);
	fputs(" (moe-pack --help)\n", stderr);
	return 2;
}

static int parse_uint(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	moe_check_stdout_at_exit("moe-pack");
	struct pack_options o;
	pack_options_default(&o);
	o.progress = isatty(STDERR_FILENO);
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	int synth = argc > 1 && strcmp(argv[1], "synth") == 0;
	int info = 0, json = 0, verify = 0, list = 0;
	const char *preset = "mixtral-tiny", *format = "pack", *dtype = NULL, *mlp_only = NULL;
	uint64_t seed = 1, shard = 0;
	struct { int set; uint64_t v; } ov[OPT_DFF - OPT_LAYERS + 1] = {{0, 0}};
	int c;
	if (synth) {
		argv++;
		argc--;
	}
	while ((c = getopt_long(argc, argv, "q:j:fhV", long_opts, NULL)) != -1) {
		uint64_t v;
		switch (c) {
		case 'q':
			if (pack_parse_quant(optarg, &o))
				return usage_error("%s", moe_last_error());
			break;
		case OPT_ALIGN:
			o.alignment = (uint32_t)moe_parse_size(optarg);
			if (o.alignment != 4096 && o.alignment != (2u << 20))
				return usage_error("--align %s: 4K or 2M", optarg);
			break;
		case OPT_ZLEVEL:
			if (parse_uint(optarg, &v) || v < 1 || v > 19)
				return usage_error("--zstd-level %s: 1 to 19", optarg);
			o.zstd_level = (int)v;
			break;
		case OPT_ZSAVE: {
			char *end;
			o.zstd_min_saving = strtod(optarg, &end);
			if (*end || end == optarg || o.zstd_min_saving < 0 || o.zstd_min_saving > 100)
				return usage_error("--zstd-min-saving %s: a percentage, 0 to 100", optarg);
			break;
		}
		case 'j':
			if (parse_uint(optarg, &v) || v < 1 || v > 1024)
				return usage_error("--threads %s: 1 to 1024", optarg);
			o.threads = (int)v;
			break;
		case OPT_MEMORY:
			if (!(o.memory_budget = moe_parse_size(optarg)))
				return usage_error("--memory %s: a size like 512M", optarg);
			break;
		case OPT_TOKENIZER: o.tokenizer_path = optarg; break;
		case 'f': o.force = 1; break;
		case OPT_NOPROGRESS: o.progress = 0; break;
		case OPT_INFO: info = 1; break;
		case OPT_JSON: json = 1; break;
		case OPT_VERIFY: verify = 1; break;
		case OPT_PRESET: preset = optarg; break;
		case OPT_LIST: list = 1; break;
		case OPT_LAYERS: case OPT_HIDDEN: case OPT_HEADS: case OPT_KVHEADS: case OPT_HEADDIM: case OPT_VOCAB:
		case OPT_EXPERTS: case OPT_TOPK: case OPT_EFF: case OPT_DFF:
			if (parse_uint(optarg, &v) || v == 0 || v > (1ull << 32))
				return usage_error("%s: a positive integer expected", optarg);
			ov[c - OPT_LAYERS].set = 1;
			ov[c - OPT_LAYERS].v = v;
			break;
		case OPT_SEED:
			if (parse_uint(optarg, &seed))
				return usage_error("--seed %s: an integer expected", optarg);
			break;
		case OPT_FORMAT: format = optarg; break;
		case OPT_MLPONLY: mlp_only = optarg; break;
		case OPT_DTYPE: dtype = optarg; break;
		case OPT_SHARD:
			if (!(shard = moe_parse_size(optarg)))
				return usage_error("--shard-size %s: a size like 2G", optarg);
			break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("moe-pack (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	const int nargs = argc - optind;
	if (synth) {
		if (list) {
			synth_list_presets();
			return 0;
		}
		if (nargs != 1)
			return usage_error("synth needs one output path%s", "");
		struct moe_hparams hp;
		if (synth_preset(preset, &hp))
			return fail(MOE_EINVAL);
		uint64_t *field[] = {&hp.n_layers, &hp.hidden, &hp.n_heads, &hp.n_kv_heads, &hp.head_dim,
				     &hp.vocab, &hp.n_experts, &hp.n_experts_used, &hp.expert_ff, &hp.dense_ff};
		for (size_t i = 0; i < sizeof field / sizeof field[0]; i++)
			if (ov[i].set)
				*field[i] = ov[i].v;
		/* hidden or heads changed but not head_dim: keep head_dim = hidden / heads (Mixtral) */
		if (hp.arch == MOE_ARCH_MIXTRAL && !ov[OPT_HEADDIM - OPT_LAYERS].set && hp.n_heads)
			hp.head_dim = hp.hidden / hp.n_heads;
		if (mlp_only) {
			if (hp.arch != MOE_ARCH_QWEN3_MOE)
				return usage_error("--mlp-only-layers %s: Qwen3-MoE presets only", mlp_only);
			for (const char *p = mlp_only; *p;) {
				char *end;
				unsigned long l = strtoul(p, &end, 10);
				if (end == p || l >= hp.n_layers || (*end && *end != ','))
					return usage_error("--mlp-only-layers %s: layer numbers below --layers", mlp_only);
				hp.mlp_only[l] = 1;
				p = *end ? end + 1 : end;
			}
		}
		if (moe_arch_sigmoid_routing(&hp) && hp.first_dense >= hp.n_layers)
			hp.first_dense = hp.n_layers > 1 ? 1 : 0;
		if (hp.arch == MOE_ARCH_GLM4_MOE) /* GLM-4.5 rotates half of each head, whatever its size */
			hp.rope_dims = hp.head_dim / 2;
		if (strcmp(format, "plan") == 0)
			return pack_plan(&hp, &o) ? fail(MOE_EINVAL) : 0;
		struct moe_source *src;
		if (synth_source(&hp, seed, &src))
			return fail(MOE_EINVAL);
		int rc;
		char *out = argv[optind];
		for (size_t n = strlen(out); n > 1 && out[n - 1] == '/'; n--)
			out[n - 1] = '\0'; /* "big/" names the folder big, to be made */
		if (strcmp(format, "pack") == 0)
			rc = pack_model(src, out, &o);
		else if (strcmp(format, "safetensors") == 0)
			rc = st_write_folder(src, out, dtype ? dtype : "bf16", shard, o.force);
		else if (strcmp(format, "gguf") == 0)
			rc = gguf_write_model(src, out, dtype ? dtype : "f16", o.force);
		else
			rc = moe_fail(MOE_EINVAL, "--format %s: pack, safetensors, gguf or plan", format);
		src_close(src);
		return rc ? fail(rc) : 0;
	}
	if (info || verify) {
		if (nargs != 1)
			return usage_error("%s needs one pack file", info ? "--info" : "--verify");
		moe_trap_truncated_mapping("moe-pack", argv[optind]);
		int rc = info ? pack_info(argv[optind], json) : pack_verify(argv[optind], o.progress);
		return rc ? fail(rc) : 0;
	}
	if (nargs != 2) {
		usage(stderr);
		return 2;
	}
	struct moe_source *src;
	int rc = src_open(argv[optind], &src);
	if (rc)
		return fail(rc);
	rc = pack_model(src, argv[optind + 1], &o);
	src_close(src);
	return rc ? fail(rc) : 0;
}
