;;; Read a Guix Scheme file as data (never evaluating it) and print facts about its forms,
;;; one per line, for tests/deploy/test_guix_files.py:
;;;
;;;   forms N                          the number of top-level forms read
;;;   form HEAD NAME                   each top-level form: (define NAME ...), (package ...)
;;;   record-field FIELD ACCESSOR      each field of a define-record-type* form
;;;   toml-option SECTION.KEY ACCESSOR KIND   each entry of %p2pcache-toml-options
;;;   package NAME VERSION             each (package (name ...) (version ...)) form
;;;   propagated-input ATOM            python-* names inside (propagated-inputs ...)
;;;
;;; The gexp reader syntax Guix files use is taught to Guile by guix_reader.scm.

(use-modules (ice-9 match))

(load "guix_reader.scm")  ; the gexp reader syntax, and read-forms

(define (say . items)
  (display (string-join (map (lambda (item)
                               (if (string? item) item (object->string item)))
                             items)
                        " "))
  (newline))

(define (atoms tree)
  (match tree
    ((head . tail) (append (atoms head) (atoms tail)))
    (() '())
    (atom (list atom))))

(define (python-name? atom)
  (let ((text (cond ((string? atom) atom)
                    ((symbol? atom) (symbol->string atom))
                    (else ""))))
    (string-prefix? "python-" text)))

(define (field-value form name)
  "The argument of the (NAME argument) sub-form of FORM, or #f."
  (any (match-lambda
         (((? (lambda (head) (eq? head name))) value . _) value)
         (_ #f))
       form))

(use-modules (srfi srfi-1))

(define (walk form)
  (match form
    (('define-record-type* type constructor maker predicate fields ...)
     (for-each (match-lambda
                 ((field accessor . _) (say "record-field" field accessor))
                 (_ #f))
               fields))
    (('define '%p2pcache-toml-options ('quasiquote entries))
     (for-each (match-lambda
                 (((? string? section) (? string? key) ('unquote accessor) kind)
                  (say "toml-option" (string-append section "." key) accessor kind)))
               entries))
    (('package fields ...)
     (say "package" (field-value fields 'name) (field-value fields 'version))
     (for-each (match-lambda
                 (('propagated-inputs inputs ...)
                  (for-each (lambda (atom) (say "propagated-input" atom))
                            (filter python-name? (atoms inputs))))
                 (_ #f))
               fields)
     (for-each walk fields))
    ((items ...)
     (for-each walk items))
    (_ #f)))

(define (form-name form)
  (match form
    ((_ (? symbol? name) . _) name)
    ((_ ((? symbol? name) . _) . _) name)
    ((_ . _) "-")
    (atom atom)))

(match (command-line)
  ((_ file)
   (let ((forms (read-forms file)))
     (say "forms" (length forms))
     (for-each (lambda (form)
                 (say "form" (if (pair? form) (car form) "atom") (form-name form))
                 (walk form))
               forms))))
