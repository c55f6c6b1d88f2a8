"""ctr's command lines and answers, and a blocking import through a fake ctr."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto.images.ctr import (
    CtrError,
    Image,
    failure,
    import_archive_blocking,
    import_command,
    list_command,
    parse_listing,
)
from images import fake_ctr, fake_ctr_calls

CTR = Path("/bin/ctr")
SOCKET = Path("/run/c.sock")
DIGEST = "sha256:c96fce8cfad09ba477ee56419b090e20fc3631f366a416ce2a21a5b00d55ca14"

#: ``ctr images ls`` of containerd 2.4.2, as printed (trailing spaces included).
LISTING = (
    "REF                                                                  "
    "TYPE                                                 DIGEST"
    "                                                                  SIZE      PLATFORMS"
    "                         LABELS                                                 \n"
    "docker.io/library/hello:1                                            "
    "application/vnd.docker.distribution.manifest.v2+json "
    "sha256:8497f866fcc5493789654bc35dc4864b4ace2957c07be392b7d0db0632b4b176 10.7 KiB  "
    "linux/amd64                       hepto.images.import=2f0c,io.cri-containerd.image=managed \n"
    "registry.example.com/some-team/some-project/service-name:v1.2.3-rc1  "
    "application/vnd.oci.image.index.v1+json              "
    "sha256:782deaf3093a329ff85eb2b5fa35338d2037de568a50bd617bf710c3137a06da 1.4 KiB   "
    "linux/386,linux/amd64,linux/arm64 hepto.images.import=2f0c "
    "                                     \n"
    "localhost/hepto/pause:1                                              "
    "application/vnd.oci.image.manifest.v1+json           "
    f"{DIGEST} 625.8 KiB -                                 -"
    "                                                      \n"
)


class CommandTests(SynchronousTestCase):
    def test_import(self) -> None:
        self.assertEqual(
            import_command(CTR, SOCKET, Path("/x/a.tar"), "2f0c"),
            [
                "/bin/ctr",
                "--address",
                "/run/c.sock",
                "--namespace",
                "k8s.io",
                "images",
                "import",
                "--label",
                "hepto.images.import=2f0c",
                "/x/a.tar",
            ],
        )

    def test_list(self) -> None:
        self.assertEqual(
            list_command(CTR, SOCKET, "2f0c", namespace="other"),
            [
                "/bin/ctr",
                "--address",
                "/run/c.sock",
                "--namespace",
                "other",
                "images",
                "ls",
                'labels."hepto.images.import"==2f0c',
            ],
        )


class ParseTests(SynchronousTestCase):
    def test_listing(self) -> None:
        self.assertEqual(
            parse_listing(LISTING),
            [
                Image(
                    "docker.io/library/hello:1",
                    "sha256:8497f866fcc5493789654bc35dc4864b4ace2957c07be392b7d0db0632b4b176",
                    ("linux/amd64",),
                ),
                Image(
                    "registry.example.com/some-team/some-project/service-name:v1.2.3-rc1",
                    "sha256:782deaf3093a329ff85eb2b5fa35338d2037de568a50bd617bf710c3137a06da",
                    ("linux/386", "linux/amd64", "linux/arm64"),
                ),
                Image("localhost/hepto/pause:1", DIGEST, ()),
            ],
        )

    def test_empty_listing(self) -> None:
        self.assertEqual(parse_listing("REF TYPE DIGEST SIZE PLATFORMS LABELS \n"), [])

    def test_not_a_listing(self) -> None:
        for text in ("", "\n", "Importing\telapsed: 0.0 s\n", "REF TYPE\nx y\n"):
            self.assertRaises(ValueError, parse_listing, text)
        header = LISTING.splitlines()[0]
        self.assertRaises(ValueError, parse_listing, header + "\nsomething else entirely\n")

    def test_failure(self) -> None:
        warning = (
            'time="2026-12-02T09:20:58Z" level=warning msg="DEPRECATION: The support for '
            'cgroup v1 is deprecated since containerd v2.2"\n'
        )
        self.assertEqual(failure(warning + "ctr: unexpected EOF\n"), "unexpected EOF")
        self.assertEqual(failure(b"ctr: a\nctr: b\n"), "a; b")
        self.assertEqual(failure(warning), "no reason given")
        self.assertEqual(
            failure("Upon execvpe ctr: no such file\n"), "Upon execvpe ctr: no such file"
        )


class BlockingImportTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hepto-ctr-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.ctr = fake_ctr(
            self.directory,
            {
                "good.tar": {"images": [{"name": "localhost/a:1", "digest": DIGEST}]},
                "bad.tar": {"fail": "unexpected EOF"},
                "unnamed.tar": {"images": []},
            },
        )

    def test_imported(self) -> None:
        os.environ["CONTAINERD_SNAPSHOTTER"] = "zfs"
        self.addCleanup(os.environ.pop, "CONTAINERD_SNAPSHOTTER")
        images = import_archive_blocking(self.ctr, SOCKET, self.directory / "good.tar")
        for call in fake_ctr_calls(self.ctr):
            self.assertNotIn("CONTAINERD_SNAPSHOTTER", call["environ"])
        self.assertEqual(images, [Image("localhost/a:1", DIGEST, ("linux/amd64",))])
        [imported, listed] = [[str(self.ctr), *call["argv"]] for call in fake_ctr_calls(self.ctr)]
        token = imported[8].split("=", 1)[1]
        archive = self.directory / "good.tar"
        self.assertEqual(imported, import_command(self.ctr, SOCKET, archive, token))
        self.assertEqual(listed, list_command(self.ctr, SOCKET, token))

    def test_every_import_has_its_own_token(self) -> None:
        import_archive_blocking(self.ctr, SOCKET, self.directory / "good.tar")
        import_archive_blocking(self.ctr, SOCKET, self.directory / "good.tar")
        tokens = {call["argv"][-1] for call in fake_ctr_calls(self.ctr) if "ls" in call["argv"]}
        self.assertEqual(len(tokens), 2)

    def test_refused(self) -> None:
        error = self.assertRaises(
            CtrError, import_archive_blocking, self.ctr, SOCKET, self.directory / "bad.tar"
        )
        self.assertEqual(str(error), "ctr images import failed (exit status 1): unexpected EOF")

    def test_named_nothing(self) -> None:
        error = self.assertRaises(
            CtrError, import_archive_blocking, self.ctr, SOCKET, self.directory / "unnamed.tar"
        )
        self.assertEqual(
            str(error),
            "ctr imported it but named no image: the archive gives none a full name",
        )

    def test_no_ctr(self) -> None:
        error = self.assertRaises(
            CtrError, import_archive_blocking, self.directory / "nope", SOCKET, Path("/x.tar")
        )
        self.assertTrue(str(error).startswith(f"cannot run {self.directory}/nope:"), str(error))
