;;; Run the TOML writer of deploy/guix/p2pcache-service.scm without Guix.
;;;
;;;   guile scheme_toml.scm SERVICE-FILE [OVERRIDES]
;;;
;;; Prints the p2pcache.toml that the service would write for a configuration holding the
;;; record's default values, with OVERRIDES (an alist of field -> value, written as Scheme
;;; data) applied.  The writer's own forms (toml-string, toml-value, %p2pcache-toml-options,
;;; p2pcache-configuration->toml) are read from the file and evaluated as they are.  Guix is
;;; not available here, so three things are stood in for: the record (an alist, with one
;;; accessor per field of the define-record-type* form), and Guix's `G_' and
;;; `formatted-message' (the message text itself; an error exits with status 1).

(use-modules (ice-9 match) (srfi srfi-1) (srfi srfi-34))

(load "guix_reader.scm")  ; the gexp reader syntax, and read-forms

(define (G_ message) message)
(define (formatted-message format-string . arguments)
  (apply format #f format-string arguments))

(define (literal? expression)
  (match expression
    ((or (? string?) (? number?) (? boolean?)) #t)
    (('quote _) #t)
    (_ #f)))

(define (record-defaults fields)
  "Field -> default value, for the fields whose default is a literal."
  (filter-map (match-lambda
                ((field accessor ('default (? literal? expression)) . _)
                 (cons field (primitive-eval expression)))
                (_ #f))
              fields))

(define (define-accessors! fields)
  (for-each (match-lambda
              ((field accessor . _)
               (module-define! (current-module) accessor
                               (lambda (config) (assq-ref config field)))))
            fields))

(define %writer-forms
  '(toml-string toml-value %p2pcache-toml-options p2pcache-configuration->toml))

(match (command-line)
  ((_ file . overrides)
   (let* ((forms (read-forms file))
          (fields (any (match-lambda
                         (('define-record-type* _ _ _ _ fields ...) fields)
                         (_ #f))
                       forms))
          (overrides (match overrides
                       (() '())
                       ((text) (call-with-input-string text read)))))
     (define-accessors! fields)
     (for-each (lambda (form)
                 (match form
                   (('define (or (? symbol? name) ((? symbol? name) . _)) . _)
                    (when (memq name %writer-forms)
                      (primitive-eval form)))
                   (_ #f)))
               forms)
     (let ((config (append overrides (record-defaults fields))))
       (guard (message ((string? message)
                        (format (current-error-port) "~a~%" message)
                        (exit 1)))
         (display (p2pcache-configuration->toml config)))))))
