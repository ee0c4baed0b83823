"""BlockTableRows: the running sequences' block tables as persistent numpy rows, copied incrementally; and the
engine paths that read them (graph-shaped decode with preemption and prefix caching) give the same tokens."""

import numpy as np
import torch

from llmlab import ModelConfig, Transformer
from llmlab.engine import SamplingParams
from llmlab.engine.block_tables import BlockTableRows
from llmlab.engine.config import EngineConfig
from llmlab.engine.llm_engine import LLMEngine
from llmlab.engine.sequence import Sequence

FILL = 99


def seq(table):
    s = Sequence("r", [1, 2, 3], SamplingParams(max_tokens=4))
    s.block_table = table
    return s


def expected(seqs, width):
    out = np.full((len(seqs), width), FILL)
    for r, s in zip(out, seqs):
        r[:len(s.block_table)] = s.block_table
    return out


def test_rows_follow_appends_replacements_and_releases():
    bt = BlockTableRows(width=6, fill=FILL, rows=2)
    a, b = seq([3, 4]), seq([7])
    rows = bt.rows([a, b])
    assert bt.widest == 2 and (bt.array[rows] == expected([a, b], 6)).all()
    a.block_table.append(5)  # grows in place: only the new entry is copied
    b.block_table.extend([8, 9, 10])
    rows = bt.rows([b, a])
    assert bt.widest == 4 and (bt.array[rows] == expected([b, a], 6)).all()
    a.block_table = []  # preempted: a new list; stale entries must not survive
    a.block_table = [11]
    assert (bt.array[bt.rows([a])] == expected([a], 6)).all()
    row_b = bt.rows([b])[0]
    bt.release(b.seq_id)
    c = seq([1])  # takes b's row: b's entries cleared
    assert bt.rows([c]) == [row_b] and (bt.array[row_b] == expected([c], 6)[0]).all()
    del c.block_table[:]  # shrunk in place (outside the contract, but a shorter list is seen): rewritten
    assert (bt.array[bt.rows([c])] == expected([c], 6)).all()


def test_rows_grow_past_the_initial_count_and_keep_their_contents():
    bt = BlockTableRows(width=3, fill=FILL, rows=2)
    seqs = [seq([i, i + 1]) for i in range(9)]
    rows = bt.rows(seqs[:2])
    rows = bt.rows(seqs)  # grows twice
    assert len(set(rows)) == 9 and (bt.array[rows] == expected(seqs, 3)).all()
    for s in seqs:
        bt.release(s.seq_id)
    assert not bt.held and len(bt.free) == len(bt.array)


def test_a_table_wider_than_a_row_is_refused():
    bt = BlockTableRows(width=2, fill=FILL)
    try:
        bt.rows([seq([1, 2, 3])])
    except ValueError as e:
        assert "more than the 2" in str(e)
    else:
        raise AssertionError("no error")


def run(graphs: bool, **options):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=101, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=96, max_position_embeddings=256)
    engine = LLMEngine(Transformer(cfg).eval(), None, EngineConfig(block_size=4, cpu_pack_linears=False, **options),
                       pad_decode=True)
    if graphs:
        from llmlab.engine.emulated_graphs import emulate_cuda_graphs

        emulate_cuda_graphs(engine.runner)
    shared = list(range(1, 13))  # a shared prefix of 3 blocks: later prompts hit the prefix cache
    prompts = [shared + [20 + i] * (3 + 5 * i) for i in range(5)]
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=10 + 7 * i, ignore_eos=True))
    out = {}
    while engine.has_unfinished_requests():
        out |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
    return engine, out


def test_graph_shaped_decode_with_preemption_and_prefix_hits_gives_the_same_tokens():
    _, want = run(False, num_blocks=200)
    engine, got = run(True, num_blocks=24)  # 5 sequences of up to 60 tokens in 24 blocks of 4: preemptions
    assert got == want
    assert engine.scheduler.num_preemptions > 0 and engine.block_manager.num_hits > 0
    assert not engine.runner.table_rows.held  # every finished sequence gave its row back
