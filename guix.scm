;;; guix.scm --- p2pcache as a Guix package, built from this checkout.
;;;
;;;   guix build -f guix.scm              # build it
;;;   guix shell -f guix.scm              # a shell where `p2pcache` is on PATH
;;;
;;; The source is the checkout itself (local-file, limited to the files Git tracks), so no
;;; release tarball or hash is needed.  Dependencies mirror install_requires in setup.cfg;
;;; the three that Guix does not package (kademlia, rpcudp and u-msgpack-python, pinned by
;;; setup.cfg because p2pcache subclasses their internals) are defined below from their
;;; PyPI releases.
;;;
;;; LIMITATION: Guix cannot be installed on the machine this project is developed and
;;; tested on.  CI only checks that Guile can read every top-level form of this file
;;; (tests/deploy/test_guix_files.py) and that its dependencies and version match
;;; setup.cfg and p2pcache/__init__.py; it has never been evaluated or built there.
;;; Dependencies are looked up by name (specification->package) so that they do not depend
;;; on which Guix module defines them; their versions must meet setup.cfg's bounds (the
;;; build's sanity-check phase checks that), which needs a recent Guix.  The PyPI hashes below are the SHA-256 of the
;;; release tarballs, written in Nix base32.

(use-modules (guix packages)
             (guix gexp)
             (guix download)
             (guix git-download)
             (guix build-system pyproject)
             ((guix build-system python) #:select (pypi-uri))
             ((guix licenses) #:prefix license:)
             (gnu packages))

(define %source-directory
  (dirname (current-filename)))

(define python-u-msgpack-python
  (package
    (name "python-u-msgpack-python")
    (version "2.8.0")
    (source
     (origin
       (method url-fetch)
       (uri (pypi-uri "u-msgpack-python" version))
       (sha256
        (base32 "06n61d9dmzm0wf057kabvb11s8lw597qnla43vs6spnpdqysh0dq"))))
    (build-system pyproject-build-system)
    (native-inputs (map specification->package
                        '("python-setuptools" "python-wheel")))
    (home-page "https://github.com/vsergeev/u-msgpack-python")
    (synopsis "Portable MessagePack serializer and deserializer")
    (description "u-msgpack-python is a lightweight MessagePack serializer and
deserializer module written in pure Python.")
    (license license:expat)))

(define python-rpcudp
  (package
    (name "python-rpcudp")
    (version "5.0.1")
    (source
     (origin
       (method url-fetch)
       (uri (pypi-uri "rpcudp" version))
       (sha256
        (base32 "0y5v6cckkkapykqgpd1bzl1ink10qff2b3m71x8wisc47sdknydn"))))
    (build-system pyproject-build-system)
    ;; The release tarball has no test suite.
    (arguments (list #:tests? #f))
    (native-inputs (map specification->package
                        '("python-setuptools" "python-wheel")))
    (propagated-inputs (list python-u-msgpack-python))
    (home-page "https://github.com/bmuller/rpcudp")
    (synopsis "Asynchronous RPC over UDP")
    (description "rpcudp is a remote procedure call protocol over UDP for asyncio,
on which the Python kademlia library is built.")
    (license license:expat)))

(define python-kademlia
  (package
    (name "python-kademlia")
    (version "2.2.3")
    (source
     (origin
       (method url-fetch)
       (uri (pypi-uri "kademlia" version))
       (sha256
        (base32 "13nl92z34iw4qy02miqa3dijp6vmb8545126ap3qqr19cjgdix1k"))))
    (build-system pyproject-build-system)
    ;; The release tarball's tests need network access.
    (arguments (list #:tests? #f))
    (native-inputs (map specification->package
                        '("python-setuptools" "python-wheel")))
    (propagated-inputs (list python-rpcudp))
    (home-page "https://github.com/bmuller/kademlia")
    (synopsis "Kademlia distributed hash table for asyncio")
    (description "An asynchronous Python implementation of the Kademlia
distributed hash table.")
    (license license:expat)))

(define-public p2pcache
  (package
    (name "p2pcache")
    ;; __version__ of p2pcache/__init__.py (tests/deploy/test_guix_files.py checks it).
    (version "0.1.0.dev0")
    (source (local-file %source-directory "p2pcache-checkout"
                        #:recursive? #t
                        #:select? (git-predicate %source-directory)))
    (build-system pyproject-build-system)
    (arguments
     (list
      ;; The format tests only: the rest of the suite starts networks of nodes and calls
      ;; tools the build environment lacks (Nix, promtool, systemd-analyze); run
      ;; ./scripts/test for all of it.
      #:test-flags #~(list "tests/guix")))
    (native-inputs
     (map specification->package
          '("python-setuptools" "python-wheel" "python-pytest" "python-pytest-asyncio"
            "python-hypothesis" "python-pyyaml")))
    (propagated-inputs
     (append (map specification->package
                  '("python-pynacl" "python-zstandard" "python-aiohttp" "python-aiosqlite"
                    "python-httptools" "python-uvloop" "python-prometheus-client"
                    "python-zeroconf" "python-ifaddr"))
             (list python-kademlia python-rpcudp python-u-msgpack-python)))
    (home-page #f)                      ;no public home page yet
    (synopsis "Peer-to-peer binary substitute cache for GNU Guix")
    (description "p2pcache is a substitute server for @command{guix-daemon}
that finds store items in a Kademlia DHT, fetches their compressed archives from
other peers, and passes on only items signed by builders or Guix keys the user
trusts, whose bytes match the signed hash.  Nodes that hold a Guix store publish
it to the network.")
    (license license:gpl3+)))

p2pcache
