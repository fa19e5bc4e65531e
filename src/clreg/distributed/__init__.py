"""clreg across processes: the collectives the regulariser and the measures use (`collectives`) and the
generic process launcher behind `clreg run --nproc` (`launch`)."""
from clreg.distributed.collectives import average_, rank, share, sum_, unwrap, world_size

__all__ = ["average_", "rank", "share", "sum_", "unwrap", "world_size"]
