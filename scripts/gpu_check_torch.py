#!/usr/bin/env python3
"""PyTorch side of the GPU check (scripts/gpu-check.sh): on the shapes the driver timed, PyTorch's
SDPA and FlexAttention (same mask rules, through create_block_mask) for masked attention, and an eager
indexer -> top-k -> gather -> softmax pipeline plus dense SDPA for the sparse ops; the bf16 matmul
and device-copy ceilings; then merges everything into one JSON report.

    python3 scripts/gpu_check_torch.py --driver-json D.json --sanitizer-json S.json --out REPORT.json
        [--budget-s 240] [--phases build=..,driver=..] [--no-torch]

Only the standard library is needed for the merge; without torch (or a GPU) the report says why.
Every torch number is the median of CUDA-event timings after warm-ups, on random (never zero) data.
"""
import argparse
import json
import math
import os
import sys
import time

ROLE_ITEM, ROLE_MEMORY, ROLE_TARGET = 0, 1, 2
NONE, SELF, SAME, EARLIER, SAME_OR_EARLIER, ANY = range(6)
PRESETS = {  # SPEC §3, rows = query role, columns = key role; (seg relation, causal)
    'causal': [[(ANY, 1)] * 3] * 3,
    'full': [[(ANY, 0)] * 3] * 3,
    'persrec': [[(SAME, 1), (EARLIER, 1), (NONE, 1)], [(SAME, 1), (SAME_OR_EARLIER, 1), (NONE, 1)], [(SAME, 1), (EARLIER, 1), (SELF, 1)]],
    'rec2pm-reference': [[(ANY, 1), (NONE, 1), (NONE, 1)], [(ANY, 1), (SAME, 1), (NONE, 1)], [(ANY, 1), (NONE, 1), (SELF, 1)]],
    'rec2pm-update': [[(SAME, 1), (SAME, 1), (NONE, 1)], [(SAME, 1), (SAME, 1), (NONE, 1)], [(SAME, 1), (SAME, 1), (SELF, 1)]],
}


def bench_layout(rule, users, tokens):
    """bench/attention.ts buildLayout: segments of 200 items and 4 memory tokens (Rec2PM-update: [4 memory; 200 items; 4 memory])."""
    segs, roles = [], []
    for _ in range(users):
        n, seg = 0, 0
        while n < tokens:
            blocks = [(ROLE_MEMORY, 4), (ROLE_ITEM, 200), (ROLE_MEMORY, 4)] if rule == 'rec2pm-update' else [(ROLE_ITEM, 200), (ROLE_MEMORY, 4)]
            for role, count in blocks:
                for _ in range(count):
                    if n >= tokens:
                        break
                    segs.append(seg)
                    roles.append(role)
                    n += 1
            seg += 1
    return segs, roles


# The layout and rule the mask reads (SPEC §3's pair rule, as cuda/common/mask_rules.h). One function
# for every rule: FlexAttention recompiles per shape and dtype only, not per rule.
STATE = {}


def allowed(b, q_idx, kv_idx):
    roles, segs, rel, cau = STATE['roles'], STATE['segs'], STATE['rel'], STATE['cau']
    rq, rk = roles[b, q_idx], roles[b, kv_idx]
    sq, sk = segs[b, q_idx], segs[b, kv_idx]
    r = rel[rq * 3 + rk]
    c = cau[rq * 3 + rk]
    seg_ok = ((r == SELF) & (kv_idx == q_idx)) | ((r == SAME) & (sk == sq)) | ((r == EARLIER) & (sk < sq)) | \
             ((r == SAME_OR_EARLIER) & (sk <= sq)) | (r == ANY)
    return seg_ok & ((c == 0) | (kv_idx <= q_idx))


def mask_mod(b, h, q_idx, kv_idx):
    return allowed(b, q_idx, kv_idx)


class Timer:
    """Median of CUDA-event timings (a host clock with --device cpu, the script's own self-test)."""

    def __init__(self, torch, device):
        self.torch = torch
        self.cuda = device == 'cuda'

    def median_ms(self, fn, warmup=3, min_ms=150.0, min_iters=10, max_iters=200):
        torch = self.torch
        if not self.cuda:
            warmup, min_iters, max_iters = 1, 1, 2
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        times, total = [], 0.0
        while len(times) < max_iters and (len(times) < min_iters or total < min_ms):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                t = a.elapsed_time(b)
            else:
                t0 = time.perf_counter()
                fn()
                t = (time.perf_counter() - t0) * 1e3
            times.append(t)
            total += t
        times.sort()
        return times[len(times) // 2]


def run_torch(driver, budget_s, notes, dev='cuda'):
    deadline = time.time() + budget_s
    out = {'available': False}
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        out['reason'] = f'import torch failed: {e}'
        return out
    out['version'] = torch.__version__
    if dev == 'cuda' and not torch.cuda.is_available():
        out['reason'] = 'torch.cuda.is_available() is False'
        return out
    out['available'] = True
    out['device'] = torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu (self-test of this script, timings meaningless)'
    timer = Timer(torch, dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    dtypes = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}

    def rand(*shape, dtype=torch.float32):
        return (torch.rand(*shape, device=dev, generator=gen, dtype=torch.float32) * 2 - 1).to(dtype)

    # Ceilings: bf16 matmul 8192^3 on random data, and a 2 GiB device copy (read + write bytes).
    ceilings = {}
    try:
        n = 8192 if dev == 'cuda' else 256
        a, b = rand(n, n, dtype=torch.bfloat16), rand(n, n, dtype=torch.bfloat16)
        ms = timer.median_ms(lambda: torch.matmul(a, b), warmup=3, min_iters=10, max_iters=20, min_ms=0)
        ceilings['bf16MatmulTflops'] = 2 * n ** 3 / (ms * 1e9)
        ceilings['bf16MatmulShape'] = f'{n}x{n}x{n}'
        del a, b
        x = torch.empty(1 << 29 if dev == 'cuda' else 1 << 20, device=dev, dtype=torch.float32).uniform_(generator=gen)
        y = torch.empty_like(x)
        ms = timer.median_ms(lambda: y.copy_(x), warmup=3, min_iters=10, max_iters=20, min_ms=0)
        ceilings['copyGBps'] = 2 * x.numel() * 4 / (ms * 1e6)
        ceilings['copyBytes'] = x.numel() * 4
        del x, y
    except Exception as e:  # noqa: BLE001
        notes.append(f'ceilings: {e}')
    out['ceilings'] = ceilings

    # FlexAttention, if it imports: one mask_mod for every rule (the rule table and the layout are
    # tensors it reads), compiled once per shape and dtype.
    flex = None
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    except Exception as e:  # noqa: BLE001
        notes.append(f'FlexAttention unavailable: {e}')

    results = []
    bench = driver.get('bench', [])
    attention = [b for b in bench if b['kernel'] == 'masked_attention']
    shapes = sorted({b['shape'] for b in attention}, key=lambda s: int(s.split('x')[0]) * int(s.split('x')[1]))
    H, D = 4, 64
    for shape in shapes:
        users, tokens = (int(v) for v in shape.split('x'))
        for rule in sorted({b['rule'] for b in attention if b['shape'] == shape}):
            segs_l, roles_l = bench_layout(rule, users, tokens)
            segs = torch.tensor(segs_l, device=dev, dtype=torch.int32).view(users, tokens)
            roles = torch.tensor(roles_l, device=dev, dtype=torch.int32).view(users, tokens)
            table = PRESETS[rule]
            STATE['segs'], STATE['roles'] = segs, roles
            STATE['rel'] = torch.tensor([table[i][j][0] for i in range(3) for j in range(3)], device=dev, dtype=torch.int32)
            STATE['cau'] = torch.tensor([table[i][j][1] for i in range(3) for j in range(3)], device=dev, dtype=torch.int32)
            qi = torch.arange(tokens, device=dev)
            dense = allowed(torch.arange(users, device=dev)[:, None, None], qi[None, :, None], qi[None, None, :])  # [B, T, T]
            allowed_pairs = int(dense.sum().item())
            driver_pairs = next((b.get('allowedPairs') for b in attention if b['shape'] == shape and b['rule'] == rule), None)
            if driver_pairs is not None and int(driver_pairs) != allowed_pairs:
                notes.append(f'mask mismatch {shape} {rule}: torch allows {allowed_pairs} pairs, the driver {int(driver_pairs)}')
            block_mask = None
            if flex is not None:
                try:
                    block_mask = create_block_mask(mask_mod, users, None, tokens, tokens, device=dev)
                except Exception as e:  # noqa: BLE001
                    notes.append(f'create_block_mask {shape} {rule}: {e}')
            for dname in sorted({b['dtype'] for b in attention if b['shape'] == shape and b['rule'] == rule}):
                if time.time() > deadline:
                    notes.append(f'budget spent: skipped {shape} {rule} {dname} and later')
                    break
                dt = dtypes[dname]
                q, k, v = rand(users, H, tokens, D, dtype=dt), rand(users, H, tokens, D, dtype=dt), rand(users, H, tokens, D, dtype=dt)
                row = {'kernel': 'masked_attention', 'shape': shape, 'rule': rule, 'dtype': dname, 'allowedPairs': allowed_pairs,
                       'maskAgrees': driver_pairs is None or int(driver_pairs) == allowed_pairs}
                flop = allowed_pairs * H * 4 * D
                F = torch.nn.functional
                try:
                    if rule == 'causal':
                        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
                    else:
                        m = dense[:, None]
                        fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # noqa: E731
                    sdpa_out = fn()
                    ms = timer.median_ms(fn)
                    row['sdpaMs'] = ms
                    row['sdpaTflops'] = flop / (ms * 1e9)
                except Exception as e:  # noqa: BLE001
                    row['sdpaError'] = str(e)[:300]
                if block_mask is not None and dname != 'float32':
                    try:
                        t0 = time.time()
                        flex(q, k, v, block_mask=block_mask)
                        torch.cuda.synchronize()
                        row['flexCompileS'] = time.time() - t0
                        if 'sdpaMs' in row:  # the same mask both ways (SDPA's rows with no key are NaN, flex's 0)
                            diff = (flex(q, k, v, block_mask=block_mask).float() - torch.nan_to_num(sdpa_out.float())).abs().max().item()
                            row['flexVsSdpaMaxDiff'] = diff
                        ms = timer.median_ms(lambda: flex(q, k, v, block_mask=block_mask))
                        row['flexMs'] = ms
                        row['flexTflops'] = flop / (ms * 1e9)
                    except Exception as e:  # noqa: BLE001
                        row['flexError'] = str(e)[:300]
                results.append(row)
                del q, k, v

    # Sparse: GEMs mid-term stream shapes (bench/sparse.ts), the eager PyTorch pipeline and dense SDPA.
    sparse = [b for b in bench if b['kernel'] == 'indexed_cross_attention']
    for b in sparse:
        if time.time() > deadline:
            notes.append(f"budget spent: skipped sparse {b['shape']} {b['rule']} {b['dtype']} and later")
            break
        users, queries = (int(v) for v in b['shape'].split(' ')[0].split('x'))
        keys = int(b['shape'].split('keys=')[1])
        topk = int(b['rule'].split('=')[1])
        Hs, Ds, HI, DI = 8, 64, 2, 64
        dt = dtypes[b['dtype']]
        row = {'kernel': 'indexed_cross_attention', 'shape': b['shape'], 'rule': b['rule'], 'dtype': b['dtype']}
        try:
            qI, kI, w = rand(users, queries, HI, DI, dtype=dt), rand(users, keys, DI, dtype=dt), rand(users, queries, HI, dtype=dt)
            q, k, v = rand(users, queries, Hs, Ds, dtype=dt), rand(users, keys, Hs, Ds, dtype=dt), rand(users, keys, Hs, Ds, dtype=dt)
            sel = min(topk, keys)

            def pipeline():
                s = torch.relu(torch.einsum('uqhd,ukd->uqhk', qI.float(), kI.float())) * w.float()[..., None]
                idx = s.sum(2).topk(sel, dim=-1).indices                                 # [U, Q, sel]
                flat = idx.reshape(users, queries * sel)
                kk = torch.gather(k, 1, flat[..., None, None].expand(-1, -1, Hs, Ds)).view(users, queries, sel, Hs, Ds)
                vv = torch.gather(v, 1, flat[..., None, None].expand(-1, -1, Hs, Ds)).view(users, queries, sel, Hs, Ds)
                att = torch.softmax(torch.einsum('uqhd,uqshd->uqhs', q.float(), kk.float()) / math.sqrt(Ds), dim=-1)
                return torch.einsum('uqhs,uqshd->uqhd', att, vv.float()).to(dt)
            ms = timer.median_ms(pipeline)
            row['eagerSparseMs'] = ms
            qd, kd, vd = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ms = timer.median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd))
            row['denseSdpaMs'] = ms
            del qI, kI, w, q, k, v, qd, kd, vd
        except Exception as e:  # noqa: BLE001
            row['error'] = str(e)[:300]
        results.append(row)
    out['results'] = results
    return out


def merge(driver, sanitizer, torch_out, phases, notes):
    report = dict(driver)
    ceilings = dict(report.get('ceilings', {}))
    tc = torch_out.get('ceilings', {}) if torch_out else {}
    if 'bf16MatmulTflops' in tc:
        ceilings['bf16MatmulTflops'] = tc['bf16MatmulTflops']
        ceilings['bf16MatmulSource'] = f"torch.matmul bf16 {tc.get('bf16MatmulShape')}, random data, median of CUDA events"
    if 'copyGBps' in tc:
        ceilings['copyGBpsTorch'] = tc['copyGBps']
    report['ceilings'] = ceilings
    mm = ceilings.get('bf16MatmulTflops')
    copy = ceilings.get('copyGBps') if (ceilings.get('copyGBps') or -1) > 0 else ceilings.get('copyGBpsTorch')
    by_key = {}
    for r in (torch_out or {}).get('results', []):
        by_key[(r['kernel'], r['shape'], r['rule'], r['dtype'])] = r
    for b in report.get('bench', []):
        if mm and b.get('tflops'):
            b['fractionOfBf16Matmul'] = b['tflops'] / mm
        if copy and b.get('gbps'):
            b['fractionOfCopy'] = b['gbps'] / copy
        t = by_key.get((b['kernel'], b['shape'], b['rule'], b['dtype']))
        if t:
            side = {k: v for k, v in t.items() if k not in ('kernel', 'shape', 'rule', 'dtype')}
            ours = b.get('kernelMs')
            if ours and ours > 0:
                for key in ('sdpaMs', 'flexMs', 'eagerSparseMs', 'denseSdpaMs'):
                    if key in side:
                        side[key.replace('Ms', 'OverOurs')] = side[key] / ours  # > 1: ours is faster
            b['torch'] = side
    report['sanitizer'] = sanitizer
    san_failed = [k for k, v in sanitizer.items() if isinstance(v, dict) and v.get('ok') is False]  # ok None: timed out
    report['torch'] = {k: v for k, v in (torch_out or {}).items() if k not in ('results', 'ceilings')} if torch_out else {'available': False, 'reason': 'not run'}
    report['phases'] = phases
    report['notes'] = notes
    status = report.get('status')
    report['overall'] = ('fail' if san_failed else 'pass') if status == 'pass' else status
    if san_failed:
        report['message'] = (report.get('message') or '') + f"; compute-sanitizer failed: {', '.join(san_failed)}"
    return report


def finite(x):
    """The report as strict JSON: non-finite numbers become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--driver-json', required=True)
    ap.add_argument('--sanitizer-json')
    ap.add_argument('--out', required=True)
    ap.add_argument('--budget-s', type=float, default=240)
    ap.add_argument('--phases', default='')
    ap.add_argument('--no-torch', action='store_true')
    ap.add_argument('--device', default='cuda', help='cpu: a self-test of this script without a GPU (meaningless timings)')
    a = ap.parse_args()
    t0 = time.time()
    with open(a.driver_json) as f:
        driver = json.load(f)
    sanitizer = {}
    if a.sanitizer_json and os.path.exists(a.sanitizer_json):
        with open(a.sanitizer_json) as f:
            sanitizer = json.load(f)
    phases = {}
    for part in filter(None, a.phases.split(',')):
        k, _, v = part.partition('=')
        phases[k + 'S'] = float(v)
    notes = []
    torch_out = None
    if a.no_torch:
        torch_out = {'available': False, 'reason': 'not run (--no-torch, emulated run, or no GPU)'}
    else:
        try:
            torch_out = run_torch(driver, a.budget_s, notes, a.device)
        except Exception as e:  # noqa: BLE001
            torch_out = {'available': False, 'reason': f'torch script failed: {e}'}
    phases['torchS'] = round(time.time() - t0, 1)
    report = merge(driver, sanitizer, torch_out, phases, notes)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, 'w') as f:
        json.dump(finite(report), f, indent=1, allow_nan=False, default=str)
    # A short table last (the device tool returns the end of the output).
    print(f"{'kernel':24} {'shape':22} {'rule':14} {'dtype':9} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} {'%mm':>5} {'torch/ours':>10}")
    for b in report.get('bench', []):
        t = b.get('torch', {})
        ratio = t.get('flexOverOurs') or t.get('sdpaOverOurs') or t.get('eagerSparseOverOurs')
        print(f"{b['kernel']:24} {b['shape']:22} {b['rule']:14} {b['dtype']:9} {b.get('kernelMs', -1):9.4f} {b.get('tflops', 0):8.3f} {b.get('gbps', 0):8.1f} "
              f"{100 * b.get('fractionOfBf16Matmul', 0):5.1f} {ratio if ratio else float('nan'):10.2f}")
    print(f"report {a.out}: status {report.get('status')}, overall {report.get('overall')}, torch {report['torch'].get('available')}, notes {len(notes)}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
