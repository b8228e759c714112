"""Large bodies stream through kaleidod both ways with flat memory: a 1 GiB
export reaches the client intact and a 1 GiB upload reaches the API intact,
while the daemon's peak RSS (VmHWM) grows by less than 32 MiB."""

import hashlib
import json

import pytest

from harness import Sdk, export_md5, mockmod, open_request

GIB = 1 << 30
MIB = 1 << 20
HWM_BUDGET_KIB = 32 * 1024


def download(d, size, chunked=False):
    s = Sdk(d.port)
    target = "/records/export/csv?filename=x.csv&size=%d%s" % (size, "&chunked=1" if chunked else "")
    hdrs = [("Content-Type", "application/json")] + s.auth_headers()
    conn, resp = open_request(d.port, "GET", target, hdrs, timeout=30)
    try:
        assert resp.status == 200, (resp.status, resp.read(2000))
        assert resp.getheader("Content-Type", "").startswith("text/csv"), resp.getheaders()
        h = hashlib.md5()
        n = 0
        while True:
            piece = resp.read(MIB)
            if not piece:
                break
            h.update(piece)
            n += len(piece)
        return n, h.hexdigest()
    finally:
        conn.close()


def upload(d, size, chunked=False):
    s = Sdk(d.port)
    hdrs = [("Content-Type", "application/json")] + s.auth_headers()
    if not chunked:
        hdrs.append(("Content-Length", str(size)))
    h = hashlib.md5()

    def body():
        left = size
        while left > 0:
            k = min(left, len(mockmod.CSV_MIB))
            piece = mockmod.CSV_MIB[:k]
            h.update(piece)
            left -= k
            yield piece

    conn, resp = open_request(d.port, "POST", "/records/r9/values/file", hdrs, body(),
                              timeout=60, chunked=chunked)
    try:
        data = resp.read()
        assert resp.status == 200, (resp.status, data[:2000])
        return json.loads(data), h.hexdigest()
    finally:
        conn.close()


def warm(d):
    # Touch the code paths once so lazily allocated buffers are counted in
    # the baseline, not in the growth.
    download(d, 4 * MIB)
    upload(d, 4 * MIB)
    return d.vm_hwm_kib()


@pytest.mark.slow
def test_1gib_download_streams_intact_with_flat_memory(daemon, mock):
    base = warm(daemon)
    n, md5 = download(daemon, GIB)
    grew = daemon.vm_hwm_kib() - base
    assert n == GIB
    assert md5 == export_md5(GIB)
    assert grew < HWM_BUDGET_KIB, "VmHWM grew by %d KiB over %d KiB" % (grew, base)


@pytest.mark.slow
def test_1gib_upload_streams_intact_with_flat_memory(daemon, mock):
    base = warm(daemon)
    ans, md5 = upload(daemon, GIB)
    grew = daemon.vm_hwm_kib() - base
    assert ans["received"] == GIB, ans
    assert ans["md5"] == md5
    assert grew < HWM_BUDGET_KIB, "VmHWM grew by %d KiB over %d KiB" % (grew, base)


@pytest.mark.slow
def test_chunked_256mib_both_ways_with_flat_memory(daemon, mock):
    base = warm(daemon)
    n, md5 = download(daemon, 256 * MIB, chunked=True)
    assert (n, md5) == (256 * MIB, export_md5(256 * MIB))
    ans, md5 = upload(daemon, 256 * MIB, chunked=True)
    assert (ans["received"], ans["md5"]) == (256 * MIB, md5)
    grew = daemon.vm_hwm_kib() - base
    assert grew < HWM_BUDGET_KIB, "VmHWM grew by %d KiB over %d KiB" % (grew, base)
