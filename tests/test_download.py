"""Checkpoints by URL (mmvolo.download): fetched once into torch.hub's cache, atomically,
hash-checked, then read under the same weights-only trust rule as a file.

Every server here is a ThreadingHTTPServer on 127.0.0.1 (port 0); TORCH_HOME is tmp_path.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCH

import mmvolo.download as download
from mmvolo.checkpoint import CheckpointError, UntrustedCheckpointError, load_checkpoint_file
from mmvolo.download import DownloadError, cache_path, hash_prefix, resolve_checkpoint_path
from mmvolo.models import VOLO


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path]``; ``server.cut[path] = n`` stops after n body bytes
    (Content-Length still says the whole size), ``server.no_length`` omits Content-Length."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        if self.path not in self.server.no_length:
            self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        sent = body[:self.server.cut.get(self.path, len(body))]
        self.wfile.write(sent)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


class Server:
    """A local file server; ``url(name)`` for what ``serve(name, data)`` put there."""

    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        self.httpd.files, self.httpd.cut, self.httpd.no_length = {}, {}, set()
        self.httpd.requests = []
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def serve(self, name: str, data: bytes, cut: int | None = None,
              length: bool = True) -> str:
        self.httpd.files[f'/{name}'] = data
        if cut is not None:
            self.httpd.cut[f'/{name}'] = cut
        if not length:
            self.httpd.no_length.add(f'/{name}')
        return self.url(name)

    def url(self, name: str) -> str:
        return f'http://127.0.0.1:{self.httpd.server_address[1]}/{name}'

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """TORCH_HOME in tmp_path, and no proxy between the tests and 127.0.0.1."""
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    for name in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'all_proxy',
                 'ALL_PROXY'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('no_proxy', '*')
    return home


@pytest.fixture
def server():
    running = Server()
    yield running
    running.stop()


def cache_dir(home: Path) -> Path:
    return home / 'hub' / 'checkpoints'


def cached_files(home: Path) -> list[str]:
    """Everything in the cache folder (temporary files included)."""
    folder = cache_dir(home)
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def tiny_volo_bytes() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A tiny VOLO's raw-mode weights as torch.save writes them (the official key layout)."""
    source = VOLO(dict(TINY_ARCH), feature_pyramid=False)
    source.init_weights()
    state = source.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


def tensor_file_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({'w': torch.arange(1000, dtype=torch.float32)}, buffer)
    return buffer.getvalue()


def one_line(error: BaseException) -> str:
    message = str(error)
    assert '\n' not in message, message
    return message


# ------------------------------------------------------------------------------------------
# Naming
# ------------------------------------------------------------------------------------------
def test_cache_path_is_torch_hub_checkpoints(torch_home):
    url = 'https://github.com/sail-sg/volo/releases/download/volo_1/d1_224_84.2.pth.tar'
    assert cache_path(url) == str(cache_dir(torch_home) / 'd1_224_84.2.pth.tar')
    assert hash_prefix('d1_224_84.2.pth.tar') is None
    assert hash_prefix('resnet18-f37072fd.pth') == 'f37072fd'
    assert hash_prefix('volo-d1-224.pth') is None  # too short to be a hash
    assert resolve_checkpoint_path('pretrained/x.pth') == 'pretrained/x.pth'
    with pytest.raises(DownloadError, match='names no file'):
        cache_path('http://127.0.0.1/folder/')


# ------------------------------------------------------------------------------------------
# Download, cache, offline
# ------------------------------------------------------------------------------------------
def test_download_then_load_from_the_cache_without_the_server(torch_home, server, capsys):
    data = tensor_file_bytes()
    url = server.serve('weights.pth', data)
    started = time.perf_counter()
    loaded = load_checkpoint_file(url)
    elapsed = time.perf_counter() - started
    torch.testing.assert_close(loaded['w'], torch.arange(1000, dtype=torch.float32))
    assert cached_files(torch_home) == ['weights.pth']  # no temporary file left
    assert (cache_dir(torch_home) / 'weights.pth').read_bytes() == data
    assert capsys.readouterr().err == ''  # no progress bar when stderr is no terminal
    print(f'[download figures] {len(data)} bytes in {elapsed * 1000:.1f} ms')
    server.stop()
    again = load_checkpoint_file(url)  # from the cache: the server is gone
    torch.testing.assert_close(again['w'], loaded['w'])
    assert server.requests == ['/weights.pth']


def test_pretrained_init_cfg_by_url(torch_home, server):
    data, state = tiny_volo_bytes()
    url = server.serve('tiny_volo.pth', data)
    backbone = VOLO(dict(TINY_ARCH), init_cfg=dict(type='Pretrained', checkpoint=url))
    backbone.init_weights()
    for key, value in state.items():
        torch.testing.assert_close(backbone.state_dict()[key], value)
    assert cached_files(torch_home) == ['tiny_volo.pth']


def test_mmengine_load_checkpoint_by_url_goes_through_mmvolo(torch_home, server):
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader

    import mmvolo.runtime  # noqa: F401 - registers the http(s) scheme

    data, state = tiny_volo_bytes()
    url = server.serve('tiny_volo.pth', data)
    loader = CheckpointLoader._get_checkpoint_loader(url)
    assert loader.__module__ == 'mmvolo.runtime.checkpoint_loader'
    assert CheckpointLoader._get_checkpoint_loader(url.replace('http', 'https')) is loader
    model = VOLO(dict(TINY_ARCH), feature_pyramid=False)
    load_checkpoint(model, url, map_location='cpu', strict=True)
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert cached_files(torch_home) == ['tiny_volo.pth']


def test_no_network_names_the_url_and_where_to_put_the_file(torch_home):
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    url = f'http://127.0.0.1:{port}/d1_224_84.2.pth.tar'
    where = cache_dir(torch_home) / 'd1_224_84.2.pth.tar'
    with pytest.raises(DownloadError) as info:
        load_checkpoint_file(url)
    message = one_line(info.value)
    assert url in message and f'put the file at {where} by hand' in message
    assert cached_files(torch_home) == []
    where.parent.mkdir(parents=True)  # put by hand: used without network
    where.write_bytes(tensor_file_bytes())
    assert load_checkpoint_file(url)['w'].shape == (1000,)


def test_http_error_is_one_line(torch_home, server):
    with pytest.raises(DownloadError, match=r'cannot download checkpoint .*missing\.pth: '
                       r'HTTP 404') as info:
        load_checkpoint_file(server.url('missing.pth'))
    one_line(info.value)
    assert cached_files(torch_home) == []


# ------------------------------------------------------------------------------------------
# Broken downloads are never cached
# ------------------------------------------------------------------------------------------
def test_server_closing_mid_file_caches_nothing(torch_home, server):
    data = tensor_file_bytes()
    url = server.serve('cut.pth', data, cut=len(data) // 2)
    with pytest.raises(DownloadError, match=rf'broke off after {len(data) // 2} of '
                       rf'{len(data)} bytes; nothing was cached') as info:
        load_checkpoint_file(url)
    one_line(info.value)
    assert cached_files(torch_home) == []
    server.serve('cut.pth', data)  # the next try downloads again and succeeds
    del server.httpd.cut['/cut.pth']
    assert load_checkpoint_file(url)['w'].shape == (1000,)


def test_cut_zip_without_content_length_caches_nothing(torch_home, server):
    data = tensor_file_bytes()
    url = server.serve('nolength.pth', data, cut=len(data) - 30, length=False)
    with pytest.raises(DownloadError, match='incomplete .*no end record') as info:
        load_checkpoint_file(url)
    one_line(info.value)
    assert cached_files(torch_home) == []


def test_wrong_hash_caches_nothing_and_right_hash_loads(torch_home, server):
    data = tensor_file_bytes()
    digest = hashlib.sha256(data).hexdigest()
    wrong = server.serve('weights-deadbeef.pth', data)
    with pytest.raises(DownloadError, match=r'sha256 [0-9a-f]{8}\.\.\., not the deadbeef its '
                       'name says; nothing was cached') as info:
        load_checkpoint_file(wrong)
    one_line(info.value)
    assert cached_files(torch_home) == []
    right = server.serve(f'weights-{digest[:10]}.pth', data)
    assert load_checkpoint_file(right)['w'].shape == (1000,)
    assert cached_files(torch_home) == [f'weights-{digest[:10]}.pth']


def test_ctrl_c_mid_download_leaves_no_file(torch_home, server, monkeypatch):
    url = server.serve('big.pth', tensor_file_bytes())
    monkeypatch.setattr(download, 'CHUNK_BYTES', 512)

    class _Interrupting:
        def __init__(self, *args: object) -> None:
            pass

        def __enter__(self):
            def advance(count: int) -> None:
                raise KeyboardInterrupt

            return advance

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(download, '_progress_bar', _Interrupting)
    with pytest.raises(KeyboardInterrupt):
        load_checkpoint_file(url)
    assert cached_files(torch_home) == []


# ------------------------------------------------------------------------------------------
# Trust: a URL is no more trusted than a file
# ------------------------------------------------------------------------------------------
class _Hostile:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").close()',)


def test_hostile_pickle_over_http_is_refused_as_from_disk(torch_home, server, tmp_path):
    marker = tmp_path / 'pwned'
    buffer = io.BytesIO()
    torch.save({'w': torch.zeros(2), 'payload': _Hostile(marker)}, buffer)
    url = server.serve('hostile.pth', buffer.getvalue())
    with pytest.raises(UntrustedCheckpointError) as over_http:
        load_checkpoint_file(url)
    one_line(over_http.value)
    assert not marker.exists()
    on_disk = tmp_path / 'hostile.pth'
    on_disk.write_bytes(buffer.getvalue())
    with pytest.raises(UntrustedCheckpointError) as from_disk:
        load_checkpoint_file(on_disk)
    assert over_http.value.needs == from_disk.value.needs
    assert 'exec' in over_http.value.needs
    with pytest.raises(CheckpointError, match='needs pickled code'):
        VOLO(dict(TINY_ARCH), init_cfg=dict(type='Pretrained', checkpoint=url)).init_weights()
    assert not marker.exists()


def test_trust_is_given_to_a_url_explicitly_and_only_to_it(torch_home, server, tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader

    from mmvolo import runtime
    from mmvolo.checkpoint import TrustedLoadWarning

    marker = tmp_path / 'ran'
    buffer = io.BytesIO()
    torch.save({'w': torch.zeros(2), 'payload': _Hostile(marker)}, buffer)
    url = server.serve('trusted.pth', buffer.getvalue())
    other = server.serve('other.pth', buffer.getvalue())
    runtime.trust_checkpoint(url)  # what --trust does with the URL the user named
    try:
        with pytest.warns(TrustedLoadWarning):
            CheckpointLoader.load_checkpoint(url, map_location='cpu')
        assert marker.exists()
        marker.unlink()
        with pytest.raises(UntrustedCheckpointError):
            CheckpointLoader.load_checkpoint(other, map_location='cpu')
        assert not marker.exists()
    finally:
        runtime.checkpoint_loader._trusted_paths.discard(url)


# ------------------------------------------------------------------------------------------
# Distributed: rank 0 downloads, the others wait
# ------------------------------------------------------------------------------------------
def test_rank0_failure_still_reaches_the_barrier(torch_home, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(download, '_dist_info', lambda: (0, 2))
    monkeypatch.setattr(torch.distributed, 'barrier', lambda: calls.append('barrier'))

    def failing(url: str, dst: str) -> None:
        calls.append('download')
        raise DownloadError('offline')

    monkeypatch.setattr(download, 'download', failing)
    with pytest.raises(DownloadError, match='offline'):
        resolve_checkpoint_path('http://127.0.0.1:9/x.pth')
    assert calls == ['download', 'barrier']  # the other ranks are not left waiting


@pytest.mark.parametrize('rank', [0, 1])
def test_every_rank_passes_the_barrier_even_when_cached(torch_home, monkeypatch, rank):
    """A rank that found the file cached and skipped the barrier would leave the others
    waiting (or pair their barrier with its next collective)."""
    calls: list[str] = []
    target = Path(cache_path('http://127.0.0.1:9/x.pth'))
    target.parent.mkdir(parents=True)
    target.write_bytes(tensor_file_bytes())
    monkeypatch.setattr(download, '_dist_info', lambda: (rank, 2))
    monkeypatch.setattr(torch.distributed, 'barrier', lambda: calls.append('barrier'))
    monkeypatch.setattr(download, 'download', lambda *args: calls.append('download'))
    assert resolve_checkpoint_path('http://127.0.0.1:9/x.pth') == str(target)
    assert calls == ['barrier']


def test_other_ranks_read_what_rank0_cached(torch_home, monkeypatch):
    calls: list[str] = []
    target = Path(cache_path('http://127.0.0.1:9/x.pth'))

    def rank0_finishes() -> None:  # rank 0's download lands while rank 1 waits
        calls.append('barrier')
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tensor_file_bytes())

    monkeypatch.setattr(download, '_dist_info', lambda: (1, 2))
    monkeypatch.setattr(torch.distributed, 'barrier', rank0_finishes)
    monkeypatch.setattr(download, 'download', lambda *args: calls.append('download'))
    assert resolve_checkpoint_path('http://127.0.0.1:9/x.pth') == str(target)
    assert calls == ['barrier']


# ------------------------------------------------------------------------------------------
# The callers that checked os.path.isfile first: tools' checks, load_from, the converter
# ------------------------------------------------------------------------------------------
@pytest.mark.slow(seconds=6)  # imports mmseg.models for init_model
def test_tool_checks_and_load_from_take_a_url(torch_home, server):
    from mmengine.config import Config
    from tool_helpers import TOY_CONFIG

    from mmvolo.cli import UsageError, check_checkpoint, check_load_from
    from mmvolo.cli.checks import expected_shapes

    cfg = Config.fromfile(str(TOY_CONFIG))
    weights = {key: torch.zeros(shape) for key, shape in expected_shapes(cfg).items()}
    buffer = io.BytesIO()
    torch.save({'state_dict': weights, 'meta': {}}, buffer)
    url = server.serve('toy_seg.pth', buffer.getvalue())
    check_checkpoint(url, cfg)  # tools/test.py and tools/inference.py CHECKPOINT
    assert check_load_from(url, cfg).startswith(f'[mmvolo] load_from {url}: '
                                                f'{len(weights)} tensors loaded')
    assert server.requests == ['/toy_seg.pth']  # downloaded once, then the cache
    from mmseg.apis import init_model  # what tools/inference.py loads CHECKPOINT with

    model = init_model(cfg, url, device='cpu')
    assert torch.count_nonzero(model.backbone.pos_embed) == 0  # the served zeros
    assert server.requests == ['/toy_seg.pth']
    with pytest.raises(UsageError, match=r'cannot download checkpoint .*HTTP 404') as info:
        check_checkpoint(server.url('gone.pth'), cfg)
    assert info.value.exit_code == 1 and '\n' not in str(info.value)


@pytest.mark.slow(seconds=5)
def test_converter_takes_a_d1_sized_url(torch_home, server, tmp_path, capsys):
    """A real-size file (VOLO-D1, ~110 MB): download figures, then the converter reads it
    from the cache; the cached file cannot be the output."""
    from mmvolo.converter import OutputPathError, convert_checkpoint

    source = VOLO('d1', feature_pyramid=False)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    data = buffer.getvalue()
    url = server.serve('d1_224_84.2.pth.tar', data)
    started = time.perf_counter()
    cached = resolve_checkpoint_path(url)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f'\n[download figures] D1: {len(data)} bytes in {elapsed:.2f} s '
              f'({len(data) / elapsed / 1e6:.0f} MB/s over 127.0.0.1)')
    assert Path(cached).stat().st_size == len(data)
    result = convert_checkpoint(url, tmp_path / 'volo_d1_224.pth')
    assert result.arch == 'd1' and result.src == url
    with pytest.raises(OutputPathError):
        convert_checkpoint(url, cached)
    assert Path(cached).read_bytes() == data
    assert server.requests == ['/d1_224_84.2.pth.tar']


#: One rank of a 2-process gloo job: resolve the URL, print where it landed. Only torch and
#: mmvolo.download are imported (a fresh interpreter each).
RANK_SCRIPT = """
import sys, torch.distributed as dist
from mmvolo.download import resolve_checkpoint_path
rank, init_file, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group('gloo', init_method='file://' + init_file, rank=rank, world_size=2)
try:
    print(resolve_checkpoint_path(url))
finally:
    dist.destroy_process_group()
"""


@pytest.mark.slow(seconds=6)
def test_two_gloo_ranks_download_once(torch_home, server, tmp_path):
    """A real process group: rank 0 downloads, rank 1 waits at the barrier, reads the cache."""
    import subprocess
    import sys

    url = server.serve('shared.pth', tensor_file_bytes())
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    ranks = [subprocess.Popen([sys.executable, '-c', RANK_SCRIPT, str(rank),
                               str(tmp_path / 'pg_init'), url], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    expected = str(cache_dir(torch_home) / 'shared.pth')
    assert [out.strip() for out, _ in outputs] == [expected, expected]
    assert server.requests == ['/shared.pth']
    assert cached_files(torch_home) == ['shared.pth']


def test_converter_cli_offline_is_one_line(torch_home, tmp_path, capsys):
    from tool_helpers import run_tool_in_process, single_line_error

    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    url = f'http://127.0.0.1:{port}/d1_224_84.2.pth.tar'
    dst = tmp_path / 'out.pth'
    result = run_tool_in_process('model_converters/volo2mmseg.py', url, dst, capsys=capsys)
    assert result.returncode == 1
    line = single_line_error(result)
    assert url in line and str(cache_dir(torch_home) / 'd1_224_84.2.pth.tar') in line, line
    assert not dst.exists() and cached_files(torch_home) == []
