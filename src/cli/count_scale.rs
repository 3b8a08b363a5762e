//! `dcl count` at scale: the options for collections split across machines (`--shard`), for
//! honest limits on image size (`--max-pixels`) and for images counted region by region.
use clap::Args;

#[derive(Args, Debug, Default, Clone)]
pub struct ScaleArgs {
    /// Count only shard K of N of the listing (0 <= K < N; image i is in shard i mod N), e.g.
    /// `--shard $SLURM_ARRAY_TASK_ID/$N`; join the shards' --out folders with `dcl merge`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<super::shard::ShardSpec>,
}
