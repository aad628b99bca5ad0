"""The base config every file in `configs/` starts from; every knob a user may set is here.

Config files call `base_config()` and override what differs. On the command line any key can be
overridden as `--config.section.key=value`; the config is locked, so a mistyped key fails at start-up.
"""

import os

import ml_collections

# The top-level keys, by what a trained model is tied to (every key of `base_config` is in one):
# a ColaRec checkpoint is refused unless these agree with the config it was trained with...
FIXED_SECTIONS = ("data", "model", "inputs", "gid", "cf", "optim", "loss", "seed")
# ...the readers of a trained model (evaluate, recommend, export, serve, add_items) may change
# only these...
READER_KEYS = ("eval", "num_devices", "cpu_devices")
# ...and `train` (epochs, checkpoints, budget) may change when training resumes.
RESUMABLE_SECTIONS = ("train",)


def shared_data_dir(name: str) -> str:
  """`$COLAREC_SHARED_DATA/<name>`, default `../shared/data/<name>` (the shared RecBole files)."""
  return os.path.join(os.environ.get("COLAREC_SHARED_DATA", "../shared/data"), name)


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the embedded MovieLens-100k dataset."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_devices = 0  # devices on the mesh's data axis (0 = all JAX sees)
  # CPU only: split the host CPU into this many JAX devices (0 = JAX's own setting: one, or
  # $JAX_NUM_CPU_DEVICES / XLA_FLAGS). One per core speeds up CPU beam search; the mesh then spans
  # them (see `sharding.use_cpu_devices`). The CLI applies it before JAX starts.
  config.cpu_devices = 0

  # The model: `--mode=train` trains config.model.name; the sizes shape ColaRec's encoder-decoder
  # (defaults are small for CPU; configs for the paper's datasets use t5-small's 512/2048/8/6+6).
  model = config.model = ml_collections.ConfigDict()
  model.name = "colarec"  # colarec | lightgcn | mostpop (the collaborative baselines)
  model.d_model = 128
  model.d_ff = 512
  model.num_heads = 4
  model.num_encoder_layers = 2
  model.num_decoder_layers = 2
  model.dropout_rate = 0.1
  model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  # A local Hugging Face T5 v1.0 folder (e.g. t5-small: config.json, model.safetensors or
  # pytorch_model.bin, tokenizer.json) to start from, as the authors do: its weights and its
  # tokenizer (data.tokenizer follows); sizes above must match it. '' = random init.
  model.init_from = ""
  # Item- and user-ID embeddings start random (official) or from LightGCN's embeddings of the same
  # ids ('lightgcn'; trained first if needed), scaled to the random init's unit variance and,
  # when cf.embedding_dim != d_model, mapped by a fixed random orthogonal projection.
  model.id_init = "random"
  # Not in the paper: the decoder's start input also holds the pooled encoding h(X) (the
  # representation L_bpr trains), so the first code reads the user's summary directly.
  model.pooled_start = False
  model.freeze_ids = False  # True (with id_init='lightgcn'): the ID tables stay LightGCN's
  # Not in the paper: the last GID level's logit of each code also scores the item that code
  # leads to, by its ID embedding against the decoder state (output tied to the input ID table),
  # so the last choice among siblings is item-level and collaborative, not only a code's.
  model.tie_last_level = False
  # Not in the paper: each decoder input also holds a learned row of the GID prefix it extends
  # (one row per possible prefix of length 0..l-1, sum_t K^t; zero at the start). The per-level
  # code tables give code c one row under every prefix, though what c means depends on the
  # prefix; a small decoder must compose the prefix from the codes before it.
  model.prefix_embed = False
  # Random initialisation: 'official' (the default), the authors' PyTorch model: code heads as
  # nn.Linear's default U(+-1/sqrt(d_model)) for weight and bias, relative-position tables
  # N(0, d_model^-0.5) as Hugging Face's T5 initialises them; every other table is drawn alike on
  # both sides (tests/test_official.py compares each tensor's spread with their initial weights).
  # 'colarec' (this project's first choice): N(0, 1) code heads with a zero bias and N(0, 1)
  # relative-position tables, whose initial code logits are ~14x wider. Adopted by the rule of
  # issue 35 with the authors' loss scale. Its rule keeps ours only if theirs is significantly
  # worse on validation on both phones and beauty (3 seeds): on phones it is not (valid NDCG@10
  # 0.0337 against 0.0346, per-user Wilcoxon p 0.93), on beauty it is (0.0281 against 0.0315,
  # p 0.018; bench/results/experiments/<dataset>/authors-scale/valid_paired.json). It costs test
  # NDCG@20 at the cpu budget (phones 0.0441 against 0.0457, beauty 0.0319 against 0.0349);
  # --config.loss.generation_reduction=sum --config.model.init=colarec gives the old defaults.
  model.init = "official"
  # On a mesh: the item and user ID tables (and their optimizer state) split by rows over the
  # devices instead of copied to each, and looked up where their rows live (no device ever holds
  # a whole table); their rows are padded to a multiple of 1,024 so any device count that divides
  # it splits them evenly. The tables are what grows with the data (10M items at t5-small: 150 GB
  # of state; docs/scaling.md). Off: replicated, as before.
  model.shard_ids = False

  # ColaRec inputs.
  inputs = config.inputs = ml_collections.ConfigDict()
  inputs.max_history = 10  # training: other training items sampled per user (official 10)
  inputs.eval_history = 20  # evaluation: most recent training items, newest first (official 20)
  inputs.max_length = 256  # recommendation input length (official 256)
  inputs.index_users = 1  # user-ID slots on an indexing input (official 1)
  inputs.uad_on_item_inputs = True  # paper; False = official code (uad only on the i+ input)
  inputs.use_content = True  # False: no item text, only atomic IDs (the w/o-content ablation)
  # A history longer than max_length: 'item' drops the items that do not fit whole (ours);
  # 'token' cuts the input mid-item at max_length - 1 tokens, then EOS (the authors' tokenizer),
  # keeping the cut item's ID slot and first tokens.
  inputs.history_cut = "item"
  # Not in the paper: each history item on a recommendation input also carries its GID codes,
  # embedded by the decoder's output codebook (so the decoder can learn "more of the clusters the
  # user already likes" directly). Never on indexing inputs, whose item's GID is the target.
  inputs.history_codes = False
  # Training: the chance that an item's atomic-ID slot (in a history or on an item input) reads
  # the shared "unknown item" token instead, so the model learns to place an item from its text.
  # Items added after training (--mode=add_items) always read that token. 0 = never (official).
  inputs.item_id_dropout = 0.0

  # Optimisation (official: AdamW, lr 5e-4, weight decay 0.01, constant, clip 1.0, batch 128).
  optim = config.optim = ml_collections.ConfigDict()
  optim.learning_rate = 5e-4
  optim.weight_decay = 0.01
  optim.schedule = "constant"  # constant | warmup_cosine
  optim.warmup_steps = 0
  optim.grad_clip = 1.0
  optim.batch_size = 128

  # The ColaRec training loop (official: 60 epochs, validation every epoch, patience 10).
  train = config.train = ml_collections.ConfigDict()
  train.epochs = 60
  train.steps_per_epoch = 0  # cap on steps per epoch (0 = every training interaction once)
  train.eval_every = 1  # validate (beam search on the valid split) every this many epochs
  train.patience = 10  # validations without improvement of eval.metric before stopping
  train.log_every = 10  # steps between progress-bar / TensorBoard updates
  train.keep_checkpoints = 2  # latest checkpoints kept for resuming (the best is kept apart)
  # Also checkpoint every this many steps inside an epoch, so a preempted run loses at most that
  # many (0 = at epoch ends only). SIGTERM / SIGINT always save at the next step boundary.
  train.checkpoint_every_steps = 0
  # A wall-clock budget for this invocation's training, in seconds (0 = none): no epoch starts
  # that would end past it at the pace so far (compilation and validation included); the last
  # epoch trained is validated, and the best checkpoint is tested as always. For fixed windows
  # (a device lease, a queue's time limit); a rerun on the workdir continues with a fresh budget.
  train.max_seconds = 0.0

  # One weight per loss term (official: lambda_gen = 0.08 on L_rec and L_index, 1 on L_bpr,
  # lambda_c = 0.1 on L_c). A weight of 0 removes the term and the passes only it needs, e.g.
  # --config.loss.index_weight=0 trains without the indexing task.
  loss = config.loss = ml_collections.ConfigDict()
  loss.rec_weight = 0.08
  loss.index_weight = 0.08
  loss.bpr_weight = 1.0
  loss.contrastive_weight = 0.1
  # L_bpr and L_c score a pair by the dot product of pooled encodings (official, 0) or, with a
  # temperature t > 0, by cosine similarity / t (bounded scores).
  loss.pair_temperature = 0.0
  # How L_rec and L_index reduce over the l code positions: 'mean' (the default: the authors'
  # CrossEntropyLoss over batch x positions, the convention the paper's 0.08 weights were set in)
  # or 'sum' of -log p per example (this project's first choice, which weighs generation l times
  # more against L_bpr and L_c). Chosen with model.init above, by the same validation test.
  loss.generation_reduction = "mean"
  # L_bpr and L_c: -log_sigmoid(margin) ('log_sigmoid') or the authors' -log(1e-10 + sigmoid)
  # ('official'), whose gradient vanishes below a margin of about -23.
  loss.pair_form = "log_sigmoid"
  # Not in the paper: L_bpr and L_c against 'single' sampled negatives (the paper's BPR) or
  # 'in_batch': a softmax over the anchor's positive, every other row's positive and every row's
  # sampled negative (2b - 1 negatives per anchor; on a mesh, the rows of the anchor's device).
  # pair_form applies to 'single' only. The cpu budget's configs use 'in_batch' (`cpu_budget`).
  loss.pair_negatives = "single"

  # Data: where interactions and item text come from, and how they are split and tokenised.
  data = config.data = ml_collections.ConfigDict()
  data.source = "movielens"  # movielens (embedded ml-100k) | atomic (RecBole files) | amazon | foodcom
  data.name = "ml-100k"  # atomic: file stem <name>.inter; amazon: category, e.g. Beauty
  data.dir = ""  # folder of the source's files (not used by movielens)
  data.cache_dir = ""  # downloads; '' = $COLAREC_CACHE or ~/.cache/colarec_jax
  data.user_field = "user_id"  # atomic column names
  data.item_field = "item_id"
  data.time_field = "timestamp"  # '' = no timestamps: file row order is time order
  data.rating_field = "rating"  # '' = no ratings
  data.min_rating = 0.0  # drop interactions rated below this (0 keeps all)
  # Item content fields, 'column[:label]' joined by commas, in content-string order; the content
  # string is 'label value label value ...' (official format), a missing field is left out;
  # 'column:' (empty label) writes the value alone (a column holding whole content strings).
  data.text_fields = "movie_title:title,release_year:year,class:genres"
  data.kcore = -1  # k-core filter; -1 = auto: 5 for raw amazon/foodcom, none for atomic files
  data.split = "auto"  # auto (shipped split if any, else ratio) | ratio | given
  data.split_order = "random"  # random (seeded) | temporal
  data.split_ratios = (0.8, 0.1, 0.1)  # RecBole's per-user ratio rule
  data.seed = 2024  # seed of the random split
  data.cold_users = "error"  # valid/test rows of users absent from train: error | drop
  data.cold_items = "keep"  # ... of items absent from train: keep (they have text) | drop | error
  # The cold-start protocol: hold out this share of the items (chosen with data.seed) before
  # anything trains and move all their interactions to the test split; they are in no training
  # input, LightGCN graph, GID clustering or validation. After training, --mode=all indexes them
  # from their text (as --mode=add_items does) and prints a "cold items" table. 0 = off.
  data.cold_item_fraction = 0.0
  data.tokenizer = ""  # a tokenizer.json to use; '' = train a BPE tokenizer on item text
  data.vocab_size = 4000  # size of the trained tokenizer's vocabulary
  data.max_item_tokens = 30  # content tokens kept per item and read by ColaRec (official 30)
  data.lowercase = False
  # Equal timestamps inside a user's history: 'file' keeps file order; 'quicksort' orders them as
  # the authors' code does (pandas' default sort, NumPy's unstable quicksort per user).
  data.time_ties = "file"

  # LightGCN: the source of the item embeddings GIDs are built from, and a baseline.
  cf = config.cf = ml_collections.ConfigDict()
  cf.embedding_dim = 64
  cf.num_layers = 3
  cf.learning_rate = 1e-3  # Adam
  cf.reg_weight = 1e-4  # L2 on the batch's layer-0 embeddings
  cf.batch_size = 2048  # 0: grows with the training rows, an epoch of at most 512 steps (2048 up
  # to ~1M rows); every step propagates over the whole graph, so a fixed batch makes an epoch
  # quadratic in the data (bench/README.md, scale)
  cf.epochs = 300  # at most; early stopping usually ends sooner
  cf.eval_every = 1  # validate every this many epochs
  cf.patience = 10  # validations without improvement before stopping

  # GIDs: hierarchical balanced clustering.
  gid = config.gid = ml_collections.ConfigDict()
  gid.source = "lightgcn"  # lightgcn | content (TF-IDF + SVD of item text) | random | file
  gid.branching = 32  # K: clusters per node, codes 1..K (official 32)
  gid.depth = 3  # l: codes per item (official 3); K^l must be >= the number of items; 0: the
  # smallest l that holds the catalogue (e.g. 4 for a million items at K=32)
  gid.n_init = 10  # k-means seeds per clustering, best kept (official 10; 3 came within 2% of its
  # error on beauty, 4x faster: bench/results/gid.json)
  gid.max_iters = 100  # Lloyd iterations at most
  gid.seed = 0
  gid.file_column = "colarec_gid"  # source=file: token_seq column of <data.dir>/<name>.item
  gid.content_dim = 64  # source=content: SVD dimensions

  # Evaluation: full ranking over all items, training items removed.
  evaluation = config.eval = ml_collections.ConfigDict()
  evaluation.ks = (5, 10, 20)
  evaluation.metric = "ndcg@10"  # model selection and early stopping
  evaluation.long_tail_fraction = 0.2  # long-tail users: this share with the fewest training interactions
  evaluation.exclude_valid_at_test = True  # drop validation items from test rankings (official: False)
  evaluation.batch_size = 1024  # users per scoring call (score-based baselines)
  evaluation.beam_size = 100  # ColaRec's constrained beam search (official 100)
  evaluation.renormalize = False  # official: invalid codes get -inf after the log-softmax
  evaluation.decode_batch_size = 32  # users per beam-search call
  # Items a ranking must leave out (the user's training items, ...): False = the official way,
  # beam search returns beam_size items and the excluded ones are dropped after it (a user with
  # many training items can be left with fewer than max(ks)); True = the search's last step
  # skips them, so all beam_size beams are items the user may get.
  evaluation.exclude_in_search = False
  # Validate on a fixed sample of this many users (0 = all): on large datasets full validation
  # can cost more than an epoch at a CPU budget. Testing always ranks every test user.
  evaluation.valid_sample = 0
  # Items added after training (--mode=add_items, the cold-start protocol) hold a last GID code
  # the decoder never learned for them. 'sibling_mean' (default): their last step scores the mean
  # probability of their leaf parent's trained items (an average sibling); 'sibling_max' (the cpu
  # budget's, beside its encoder weight): their best trained sibling's, the encoder's term
  # (eval.encoder_weight) ordering them against it (without that term they tie it); 'model': the
  # decoder's own probability of that code (plain constrained decoding), which ranks them almost
  # never (held-out items' R@20 0.0075 against 0.0823 on phones, 0.0006 against 0.0386 on beauty,
  # with overall recall up too: bench/results/cold_levers_*.json). Trained items score alike.
  evaluation.new_item_score = "sibling_mean"
  # Not in the paper: prefixes kept at the steps before the last (0 = beam_size). The paper's beam
  # keeps 100 of the up to 1,024 (K=32, l=3) prefixes after two steps, and an item whose prefix
  # falls out cannot be returned; a width of at least K^(l-1) ranks every valid GID exactly (the
  # last step still returns beam_size items). Costs decoder work at the last step.
  evaluation.search_width = 0
  # Not in the paper: the beam's items rescored by log p(GID) + w * h(X_u).h(X_i), the user-item
  # score the encoder learns through L_bpr (h: the pooled encoding; X_i the item's indexing input
  # without user slots, encoded once per loaded model). 0 = the GID's log-probability alone (the
  # paper); the cpu budget's configs use 2.0 (`cpu_budget`).
  evaluation.encoder_weight = 0.0
  # Not in the paper: items added after training (--mode=add_items, the cold-start protocol)
  # reach a list only through the beam, which their untrained last code and unseen prefixes keep
  # them out of. m > 0: each user's best m added items by h(X_u).h(X_i) join the beam's items,
  # scored alike (their GID log-probability by teacher forcing, the last step as
  # eval.new_item_score says, plus the encoder term). 0 = the beam alone. No effect without
  # added items.
  evaluation.added_candidates = 0
  # Not in the paper: weights w_t, one per GID level (or one for all levels), on
  # log P(code | prefix), each code's share of the training interactions under its prefix (each
  # code counted once more), added to the decoder's log-probability at step t of the search; at
  # equal weights the terms sum to w * log of the item's (smoothed) popularity. () = none (the
  # paper). Past the first level the small model's codes predict the held-out item no better
  # than this popularity (bench/quality.py's per-level NLL), so the search weighs the two; the
  # cpu budget's configs use (0, 1, 1) (`cpu_budget`).
  evaluation.code_prior = ()
  # Where an item added after training goes in the GID tree (its first l-1 codes; it takes that
  # leaf parent's lowest free last code). 'indexing': the indexing task's constrained beam search
  # over the leaf parents with a free leaf, from the item's text (the paper's task, read at test
  # time). 'neighbours' (default, not in the paper): its eval.placement_neighbours nearest trained
  # items by h(X_new).h(X_j) (the pooled encodings of the items' indexing inputs, the score the
  # encoder term ranks with) vote for their leaf parents, each by exp(its score - the best's);
  # parents none of them is under follow by their best item's score. The indexing task places
  # held-out items where few of their users' searches go, the more so the longer it trains (at
  # the cpu budget, `cpu_budget`'s docstring; its runs are the only evidence, the paper size
  # takes the same default).
  evaluation.new_item_placement = "neighbours"
  evaluation.placement_neighbours = 10
  return config


def atomic_dataset(config: ml_collections.ConfigDict, name: str, text_fields: str,
                   time_field: str = "") -> ml_collections.ConfigDict:
  """Points `config.data` at the shared RecBole files of `name`."""
  config.data.source = "atomic"
  config.data.name = name
  config.data.dir = shared_data_dir(name)
  config.data.text_fields = text_fields
  config.data.time_field = time_field
  config.data.rating_field = ""
  config.data.vocab_size = 8000
  return t5_small(config)


def t5_small(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper's model size: d_model 512, d_ff 2048, 8 heads, 6 + 6 layers (for GPUs)."""
  config.model.update(d_model=512, d_ff=2048, num_heads=8, num_encoder_layers=6,
                      num_decoder_layers=6)
  return config


def cpu_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The model size for a 2-core CPU, shared by `configs/default.py` and `cpu_budget`: d_model
  64, d_ff 256, 4 heads, 1 + 1 layers, inputs of at most 128 tokens."""
  config.model.update(d_model=64, d_ff=256, num_heads=4, num_encoder_layers=1,
                      num_decoder_layers=1)
  config.inputs.max_length = 128
  return config


def cpu_budget(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `cpu` budget for a paper dataset: one run (LightGCN, GIDs, ColaRec, test) in about 20
  minutes on a 2-core CPU. The default config's model size (d_model 64, 1 + 1 layers, 128-token
  inputs), 3 epochs of 300 batches of 64 at learning rate 1e-3, LightGCN capped at 60 epochs,
  validation on a fixed sample of 2,000 users (the test still ranks every user), L_bpr and L_c
  as softmaxes over the batch's items (loss.pair_negatives='in_batch') and the beam's items
  rescored with the encoder's user-item score (eval.encoder_weight). Both chosen on every
  validation user of phones and beauty, 3 seeds each: valid NDCG@10 0.0404 / 0.0277 (in-batch,
  best weight 1.0 of 0-3 on both) against 0.0372 / 0.0261 for the paper's single negative at its
  best weight, 0.5 (bench/results/experiments/{phones,beauty}/in-batch-3/, rank-levers/). Then
  the search also adds each code's log training popularity under its prefix at the levels past
  the first (eval.code_prior=(0, 1, 1): the levels whose codes the small model predicts no better
  than that popularity), the encoder weight chosen again with it, 2.0: on 2,000 validation users
  of the same runs 0.0415 / 0.0325 against 0.0375 / 0.0297 without it (weight 1.0). The best
  mean on validation, popularity at weight 2 on every level with encoder weight 3 (0.0420 /
  0.0334), puts beauty's held-out items below TF-IDF in the cold-start protocol (R@20 0.0679
  against 0.0771); rank-levers/code-prior*.json, bench/results/cold_levers_*_prior*.json.
  Items added after training tie their best trained sibling at the last step, in the prior too
  (eval.new_item_score='sibling_max'), the encoder's term ordering them against it. In the
  cold-start protocol (phones / beauty, one seed, weight 1.0, no prior): held-out items' R@20
  0.0918 / 0.0796 against 0.0655 / 0.0410 for 'sibling_mean', 0.0007 / 0.0011 for 'model' and
  0.0506 / 0.0771 for TF-IDF; overall R@20 0.0825 / 0.0660 against 0.0850 / 0.0593 and 0.0774 /
  0.0552 (bench/results/cold_levers_{phones,beauty}_in_batch.json); with the prior and weight
  2.0, held-out 0.0922 / 0.0795, overall 0.0863 / 0.0710 (cold_levers_*_prior_b.json). At 24
  epochs the indexing task's placement of added items fits the trained items' text too closely
  (held-out R@20 0.0477 / 0.0444, below TF-IDF), so added items go where their 10 nearest trained
  items by h(X_i).h(X_j) vote (eval.new_item_placement='neighbours', the default): chosen on
  half of the held-out items (the other half reports; they have no validation interactions) among 1, 10 and
  50 neighbours and the two sibling scores: R@20 0.1022 / 0.0948 against 0.0353 / 0.0484 by
  indexing and 0.0465 / 0.0797 for TF-IDF; report half 0.1227 / 0.0967 against 0.0539 / 0.0715;
  overall 0.0954 / 0.0859 against 0.0940 / 0.0740. Added items then take more of the lists:
  validation R@20 of the trained items 0.0862 / 0.0811 with them in the catalogue, 0.1187 /
  0.1024 by indexing, 0.1358 / 0.1144 without (cold_levers_*_24_placement.json)."""
  cpu_model(config)
  config.optim.update(batch_size=64, learning_rate=1e-3)
  config.train.update(epochs=3, steps_per_epoch=300)
  config.cf.epochs = 60
  config.eval.valid_sample = 2000
  config.loss.pair_negatives = "in_batch"
  config.eval.encoder_weight = 2.0
  config.eval.code_prior = (0.0, 1.0, 1.0)
  config.eval.new_item_score = "sibling_max"
  return config


def with_variant(config: ml_collections.ConfigDict, variant: str,
                 variants: tuple[str, ...] = ("", "cpu")) -> ml_collections.ConfigDict:
  """A paper dataset's config for `--config=configs/<name>.py:VARIANT`: '' as it is (t5-small,
  for a GPU), 'cpu' with `cpu_budget`; other names a config handles itself are in `variants`.

  Raises:
    ValueError: an unknown variant (the flag parser reports it as the --config flag's error).
  """
  if variant not in variants:
    raise ValueError(f"unknown variant {variant!r}, expected one of {variants}")
  return cpu_budget(config) if variant == "cpu" else config

