;;; p2pcache-service.scm --- a Guix System service for a p2pcache node.
;;;
;;; Modelled on Guix's own guix-publish service (gnu/services/base.scm): a configuration
;;; record, a Shepherd service running the command as a dedicated system user, an account
;;; extension and an activation that creates the state directory.  The record has one field
;;; for every option of config/p2pcache.toml; the service writes them into a p2pcache.toml
;;; in the store and starts `p2pcache serve --config` on it.  It also adds the node to the
;;; Guix daemon's substitute URLs (register-substitute-url?); authorize the node's key once it
;;; has made one: guix archive --authorize < /var/lib/p2pcache/signing-key.pub
;;;
;;; Use it from an operating-system declaration, with this directory on the load path
;;; (guix system -L /path/to/p2pcache/deploy/guix reconfigure config.scm):
;;;
;;;   (use-modules (p2pcache-service))
;;;   (operating-system
;;;     ...
;;;     (services (cons (service p2pcache-service-type
;;;                              (p2pcache-configuration
;;;                               (bootstrap '("seed.example.org:8083"))
;;;                               (upstreams '("https://ci.guix.gnu.org"))))
;;;                     %base-services)))
;;;
;;; LIMITATION: Guix cannot be installed on the machine this project is developed and
;;; tested on.  CI only checks that Guile can read every top-level form of this file and
;;; that the record mirrors every option of p2pcache/config.py
;;; (tests/deploy/test_guix_files.py); it has never been evaluated by Guix there.

(define-module (p2pcache-service)
  #:use-module (gnu services)
  #:use-module (gnu services base)
  #:use-module (gnu services shepherd)
  #:use-module (gnu system shadow)
  #:use-module ((gnu packages admin) #:select (shadow))
  #:use-module (guix gexp)
  #:use-module (guix records)
  #:use-module (guix diagnostics)
  #:use-module (guix i18n)
  #:use-module ((guix ui) #:select (load* make-user-module))
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-34)
  #:export (p2pcache-configuration
            p2pcache-configuration?
            p2pcache-configuration-p2pcache
            p2pcache-configuration-data-directory
            p2pcache-configuration-listen
            p2pcache-configuration->toml
            p2pcache-service-type))

(define %checkout
  ;; The repository this file belongs to: deploy/guix/ is two levels below it.
  (dirname (dirname (dirname (current-filename)))))

(define (p2pcache-from-checkout)
  "Return the package that guix.scm at the root of the checkout defines."
  (load* (string-append %checkout "/guix.scm") (make-user-module '())))

(define-record-type* <p2pcache-configuration>
  p2pcache-configuration make-p2pcache-configuration
  p2pcache-configuration?
  ;; How the service runs.
  (p2pcache      p2pcache-configuration-p2pcache          ;file-like
                 (default (p2pcache-from-checkout)))
  (user          p2pcache-configuration-user              ;string
                 (default "p2pcache"))
  (group         p2pcache-configuration-group             ;string
                 (default "p2pcache"))
  (log-file      p2pcache-configuration-log-file          ;string
                 (default "/var/log/p2pcache.log"))
  (register-substitute-url? p2pcache-configuration-register-substitute-url? ;boolean
                            (default #t))
  ;; [node]
  (data-directory p2pcache-configuration-data-directory   ;string
                  (default "/var/lib/p2pcache"))
  (host-name     p2pcache-configuration-host-name         ;#f | string
                 (default #f))
  ;; [store]
  (store-directory p2pcache-configuration-store-directory ;string
                   (default "/gnu/store"))
  (store-root    p2pcache-configuration-store-root        ;string
                 (default "/gnu/store"))
  (database      p2pcache-configuration-database          ;string
                 (default "/var/guix/db/db.sqlite"))
  (bake-new-items? p2pcache-configuration-bake-new-items? ;boolean
                   (default #t))
  (database-poll-interval p2pcache-configuration-database-poll-interval ;seconds
                          (default 10))
  ;; [guix_endpoint]
  (listen        p2pcache-configuration-listen            ;"HOST:PORT"
                 (default "127.0.0.1:8080"))
  (narinfo-ttl   p2pcache-configuration-narinfo-ttl       ;integer (seconds)
                 (default 86400))
  (negative-ttl  p2pcache-configuration-negative-ttl      ;integer (seconds)
                 (default 60))
  (undecided-ttl p2pcache-configuration-undecided-ttl     ;integer (seconds)
                 (default 0))
  (max-connections p2pcache-configuration-max-connections ;integer
                   (default 256))
  (max-pipeline  p2pcache-configuration-max-pipeline      ;integer
                 (default 1024))
  (max-request-head p2pcache-configuration-max-request-head ;integer (bytes)
                    (default 16384))
  (idle-timeout  p2pcache-configuration-idle-timeout      ;seconds
                 (default 60))
  (request-timeout p2pcache-configuration-request-timeout ;seconds
                   (default 30))
  (hot-narinfos  p2pcache-configuration-hot-narinfos      ;integer
                 (default 16384))
  (rendered-narinfos? p2pcache-configuration-rendered-narinfos? ;boolean
                     (default #t))
  (miss-timeout  p2pcache-configuration-miss-timeout      ;seconds
                 (default 8))
  (miss-check-processes p2pcache-configuration-miss-check-processes ;integer
                        (default 2))
  (miss-recent-providers p2pcache-configuration-miss-recent-providers ;integer
                         (default 2))
  ;; [peer]
  (peer-listen   p2pcache-configuration-peer-listen       ;"HOST:PORT"
                 (default "127.0.0.1:8081"))
  (advertise-url p2pcache-configuration-advertise-url     ;#f | string
                 (default #f))
  (fetch-parallel p2pcache-configuration-fetch-parallel   ;integer
                  (default 2))
  ;; [dht]
  (dht-listen    p2pcache-configuration-dht-listen        ;"HOST:PORT" | "" (off)
                 (default "127.0.0.1:8083"))
  (bootstrap     p2pcache-configuration-bootstrap         ;list of "HOST:PORT"
                 (default '()))
  (dht-rpc-timeout p2pcache-configuration-dht-rpc-timeout ;seconds
                   (default 1.5))
  (dht-max-per-ip p2pcache-configuration-dht-max-per-ip   ;integer
                  (default 2))
  (dht-max-per-subnet p2pcache-configuration-dht-max-per-subnet ;integer
                      (default 8))
  (dht-requests-per-second-per-ip
   p2pcache-configuration-dht-requests-per-second-per-ip ;number
   (default 500))
  (dht-request-burst-per-ip
   p2pcache-configuration-dht-request-burst-per-ip ;number
   (default 2000))
  (announce-keys-per-second p2pcache-configuration-announce-keys-per-second ;number
                            (default 40))
  ;; [upstream]
  (upstreams     p2pcache-configuration-upstreams         ;list of URLs
                 (default '()))
  ;; [trust]
  (guix-acl      p2pcache-configuration-guix-acl          ;string
                 (default "/etc/guix/acl"))
  (trust-file    p2pcache-configuration-trust-file        ;#f | string (edited by
                 (default #f))                            ;`p2pcache trust')
  (trust-mode    p2pcache-configuration-trust-mode        ;"either" | "upstream" |
                 (default "either"))                      ;"quorum" | "both"
  (quorum        p2pcache-configuration-quorum            ;integer
                 (default 2))
  (require-log-proofs? p2pcache-configuration-require-log-proofs? ;boolean
                       (default #t))
  (witnesses-required p2pcache-configuration-witnesses-required ;integer
                      (default 0))
  (accept-forced? p2pcache-configuration-accept-forced?   ;boolean
                  (default #f))
  (attestation-timeout p2pcache-configuration-attestation-timeout ;seconds
                       (default 3))
  (gossip-interval p2pcache-configuration-gossip-interval ;seconds; checkpoint gossip
                   (default 300))
  (gossip-fanout p2pcache-configuration-gossip-fanout     ;integer, peers per round
                 (default 3))
  (gossip-peers  p2pcache-configuration-gossip-peers      ;list of peer URLs
                 (default '()))
  (gossip-builders p2pcache-configuration-gossip-builders ;list of builder keys (hex)
                   (default '()))
  ;; [lan]
  (lan-advertise? p2pcache-configuration-lan-advertise?   ;boolean; mDNS, like
                  (default #f))                            ;`guix publish --advertise'
  ;; [builder]
  (build-log-directory p2pcache-configuration-build-log-directory ;string; what
                       (default "/var/log/guix"))     ;`p2pcache attest' takes as evidence
  (guix-command  p2pcache-configuration-guix-command      ;string; what `p2pcache
                 (default "guix"))                        ;attest --check' rebuilds with
  (check-timeout p2pcache-configuration-check-timeout     ;seconds, per rebuild
                 (default 14400))
  (builder-witnesses p2pcache-configuration-builder-witnesses ;list of witness peer URLs
                     (default '()))
  (cosignature-interval p2pcache-configuration-cosignature-interval ;seconds
                        (default 60))
  ;; [witness]
  (witness?      p2pcache-configuration-witness?          ;boolean; cosign builders' logs
                 (default #f))
  (witness-logs  p2pcache-configuration-witness-logs      ;list of "KEY PEER-URL"
                 (default '()))
  (witness-interval p2pcache-configuration-witness-interval ;seconds
                    (default 60))
  ;; [admin]
  (admin-listen  p2pcache-configuration-admin-listen      ;"HOST:PORT"
                 (default "127.0.0.1:8082"))
  (metrics-listen p2pcache-configuration-metrics-listen   ;#f | "HOST:PORT"
                  (default #f))
  ;; [cache]
  (cache-max-size p2pcache-configuration-cache-max-size   ;integer | "20GiB"
                  (default "20GiB"))
  (promise-ttl   p2pcache-configuration-promise-ttl       ;integer (seconds)
                 (default 86400))
  (zstd-level    p2pcache-configuration-zstd-level        ;integer, 1-19
                 (default 3))
  (zstd-threads  p2pcache-configuration-zstd-threads      ;integer, 0: one per core
                 (default 0))
  ;; [logging]
  (log-level     p2pcache-configuration-log-level         ;string
                 (default "info"))
  (log-format    p2pcache-configuration-log-format        ;"text" | "json"
                 (default "text")))

(define %p2pcache-toml-options
  ;; Every option of config/p2pcache.toml: section, key, the field it comes from, and the
  ;; kind of TOML value.  An optional field left at #f is not written (the node's default
  ;; applies).
  `(("node" "data_dir" ,p2pcache-configuration-data-directory string)
    ("node" "host_name" ,p2pcache-configuration-host-name optional-string)
    ("store" "store_dir" ,p2pcache-configuration-store-directory string)
    ("store" "store_root" ,p2pcache-configuration-store-root string)
    ("store" "db" ,p2pcache-configuration-database string)
    ("store" "bake_new_items" ,p2pcache-configuration-bake-new-items? boolean)
    ("store" "db_poll_interval" ,p2pcache-configuration-database-poll-interval number)
    ("guix_endpoint" "listen" ,p2pcache-configuration-listen string)
    ("guix_endpoint" "narinfo_ttl" ,p2pcache-configuration-narinfo-ttl integer)
    ("guix_endpoint" "negative_ttl" ,p2pcache-configuration-negative-ttl integer)
    ("guix_endpoint" "undecided_ttl" ,p2pcache-configuration-undecided-ttl integer)
    ("guix_endpoint" "max_connections" ,p2pcache-configuration-max-connections integer)
    ("guix_endpoint" "max_pipeline" ,p2pcache-configuration-max-pipeline integer)
    ("guix_endpoint" "max_request_head" ,p2pcache-configuration-max-request-head integer)
    ("guix_endpoint" "idle_timeout" ,p2pcache-configuration-idle-timeout number)
    ("guix_endpoint" "request_timeout" ,p2pcache-configuration-request-timeout number)
    ("guix_endpoint" "hot_narinfos" ,p2pcache-configuration-hot-narinfos integer)
    ("guix_endpoint" "rendered_narinfos"
     ,p2pcache-configuration-rendered-narinfos? boolean)
    ("guix_endpoint" "miss_timeout" ,p2pcache-configuration-miss-timeout number)
    ("guix_endpoint" "miss_check_processes"
     ,p2pcache-configuration-miss-check-processes integer)
    ("guix_endpoint" "miss_recent_providers"
     ,p2pcache-configuration-miss-recent-providers integer)
    ("peer" "listen" ,p2pcache-configuration-peer-listen string)
    ("peer" "advertise_url" ,p2pcache-configuration-advertise-url optional-string)
    ("peer" "fetch_parallel" ,p2pcache-configuration-fetch-parallel integer)
    ("dht" "listen" ,p2pcache-configuration-dht-listen string)
    ("dht" "bootstrap" ,p2pcache-configuration-bootstrap strings)
    ("dht" "rpc_timeout" ,p2pcache-configuration-dht-rpc-timeout number)
    ("dht" "max_per_ip" ,p2pcache-configuration-dht-max-per-ip integer)
    ("dht" "max_per_subnet" ,p2pcache-configuration-dht-max-per-subnet integer)
    ("dht" "requests_per_second_per_ip"
     ,p2pcache-configuration-dht-requests-per-second-per-ip number)
    ("dht" "request_burst_per_ip"
     ,p2pcache-configuration-dht-request-burst-per-ip number)
    ("dht" "announce_keys_per_second" ,p2pcache-configuration-announce-keys-per-second number)
    ("upstream" "urls" ,p2pcache-configuration-upstreams strings)
    ("trust" "guix_acl" ,p2pcache-configuration-guix-acl string)
    ("trust" "file" ,p2pcache-configuration-trust-file optional-string)
    ("trust" "mode" ,p2pcache-configuration-trust-mode string)
    ("trust" "quorum" ,p2pcache-configuration-quorum integer)
    ("trust" "require_log_proofs" ,p2pcache-configuration-require-log-proofs? boolean)
    ("trust" "witnesses_required" ,p2pcache-configuration-witnesses-required integer)
    ("trust" "accept_forced" ,p2pcache-configuration-accept-forced? boolean)
    ("trust" "attestation_timeout" ,p2pcache-configuration-attestation-timeout number)
    ("trust" "gossip_interval" ,p2pcache-configuration-gossip-interval number)
    ("trust" "gossip_fanout" ,p2pcache-configuration-gossip-fanout integer)
    ("trust" "gossip_peers" ,p2pcache-configuration-gossip-peers strings)
    ("trust" "gossip_builders" ,p2pcache-configuration-gossip-builders strings)
    ("lan" "advertise" ,p2pcache-configuration-lan-advertise? boolean)
    ("builder" "build_log_dir" ,p2pcache-configuration-build-log-directory string)
    ("builder" "guix" ,p2pcache-configuration-guix-command string)
    ("builder" "check_timeout" ,p2pcache-configuration-check-timeout number)
    ("builder" "witnesses" ,p2pcache-configuration-builder-witnesses strings)
    ("builder" "cosignature_interval" ,p2pcache-configuration-cosignature-interval number)
    ("witness" "enabled" ,p2pcache-configuration-witness? boolean)
    ("witness" "logs" ,p2pcache-configuration-witness-logs strings)
    ("witness" "interval" ,p2pcache-configuration-witness-interval number)
    ("admin" "listen" ,p2pcache-configuration-admin-listen string)
    ("admin" "metrics_listen" ,p2pcache-configuration-metrics-listen optional-string)
    ("cache" "max_size" ,p2pcache-configuration-cache-max-size size)
    ("cache" "promise_ttl" ,p2pcache-configuration-promise-ttl integer)
    ("cache" "zstd_level" ,p2pcache-configuration-zstd-level integer)
    ("cache" "zstd_threads" ,p2pcache-configuration-zstd-threads integer)
    ("logging" "level" ,p2pcache-configuration-log-level string)
    ("logging" "format" ,p2pcache-configuration-log-format string)))

(define (toml-string str)
  "Return STR as a TOML basic string."
  (string-append
   "\""
   (string-concatenate
    (map (match-lambda
           (#\\ "\\\\")
           (#\" "\\\"")
           (#\newline "\\n")
           (#\tab "\\t")
           (chr (string chr)))
         (string->list str)))
   "\""))

(define (toml-value kind value key)
  "Return VALUE, of KIND, as TOML text; raise an error naming KEY when it does not fit."
  (define (wrong expected)
    (raise (formatted-message
            (G_ "p2pcache-configuration: ~a must be ~a, got ~s")
            key expected value)))
  (match kind
    ((or 'string 'optional-string)
     (if (string? value) (toml-string value) (wrong "a string")))
    ('boolean
     (if (boolean? value) (if value "true" "false") (wrong "#t or #f")))
    ('integer
     (if (exact-integer? value) (number->string value) (wrong "an integer")))
    ('number
     (if (and (real? value) (positive? value))
         (number->string (if (exact-integer? value) value (exact->inexact value)))
         (wrong "a positive number")))
    ('size
     (cond ((exact-integer? value) (number->string value))
           ((string? value) (toml-string value))
           (else (wrong "a byte count or a string such as \"20GiB\""))))
    ('strings
     (if (and (list? value) (every string? value))
         (string-append "[" (string-join (map toml-string value) ", ") "]")
         (wrong "a list of strings")))))

(define (p2pcache-configuration->toml config)
  "Return the text of the p2pcache.toml file that CONFIG describes."
  (let loop ((options %p2pcache-toml-options)
             (section #f)
             (lines '()))
    (match options
      (()
       (string-join (reverse lines) "\n" 'suffix))
      (((name key accessor kind) rest ...)
       (let ((value (accessor config))
             (header (if (equal? name section)
                         '()
                         (list (string-append "[" name "]")))))
         (loop rest name
               (if (and (eq? kind 'optional-string) (not value))
                   (append (reverse header) lines)
                   (cons (string-append key " = "
                                        (toml-value kind value
                                                    (string-append name "." key)))
                         (append (reverse header) lines)))))))))

(define (p2pcache-shepherd-service config)
  (match-record config <p2pcache-configuration>
    (p2pcache user group log-file)
    (let ((config-file (plain-file "p2pcache.toml"
                                   (p2pcache-configuration->toml config))))
      (list (shepherd-service
             (provision '(p2pcache))
             (requirement '(user-processes guix-daemon))
             (documentation "Run a p2pcache node: a peer-to-peer substitute cache.")
             (start #~(make-forkexec-constructor
                       (list #$(file-append p2pcache "/bin/p2pcache")
                             "serve" "--config" #$config-file)
                       #:user #$user
                       #:group #$group
                       #:log-file #$log-file))
             (stop #~(make-kill-destructor)))))))

(define (p2pcache-accounts config)
  (match-record config <p2pcache-configuration>
    (user group)
    (list (user-group (name group) (system? #t))
          (user-account
           (name user)
           (group group)
           (system? #t)
           (comment "p2pcache daemon user")
           (home-directory "/var/empty")
           (shell (file-append shadow "/sbin/nologin"))))))

(define (p2pcache-activation config)
  "Create the node's data directory, readable by its user alone (it holds the keys)."
  (match-record config <p2pcache-configuration>
    (user data-directory)
    (with-imported-modules '((guix build utils))
      #~(begin
          (use-modules (guix build utils))
          (mkdir-p #$data-directory)
          (let ((pw (getpw #$user)))
            (chown #$data-directory (passwd:uid pw) (passwd:gid pw)))
          (chmod #$data-directory #o700)))))

(define (p2pcache-guix-extension config)
  "Make the local guix-daemon ask the node for substitutes."
  (match-record config <p2pcache-configuration>
    (register-substitute-url? listen)
    (guix-extension
     (substitute-urls (if register-substitute-url?
                          (list (string-append "http://" listen))
                          '())))))

(define p2pcache-service-type
  (service-type
   (name 'p2pcache)
   (extensions
    (list (service-extension shepherd-root-service-type p2pcache-shepherd-service)
          (service-extension account-service-type p2pcache-accounts)
          (service-extension activation-service-type p2pcache-activation)
          (service-extension guix-service-type p2pcache-guix-extension)
          (service-extension profile-service-type
                             (compose list p2pcache-configuration-p2pcache))))
   (default-value (p2pcache-configuration))
   (description
    "Run a p2pcache node, a peer-to-peer substitute cache for Guix: it serves
the local store and its cache to @command{guix-daemon} and to other nodes, and
fetches what it lacks from peers found in a Kademlia DHT, passing on only items
signed by keys the user trusts.")))
