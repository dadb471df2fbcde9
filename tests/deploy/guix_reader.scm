;;; Shared by scheme_facts.scm and scheme_toml.scm: read Guix files as data.
;;;
;;; Guix files use the gexp reader syntax (#~ #$ #$@ #+), which plain Guile does not know;
;;; it is taught here the way (guix gexp) extends the reader, as plain tagged lists.

(define (tagging-reader plain splicing)
  (lambda (chr port)
    (if (and splicing (eqv? (peek-char port) #\@))
        (begin (read-char port) (list splicing (read port)))
        (list plain (read port)))))

(read-hash-extend #\~ (tagging-reader 'gexp #f))
(read-hash-extend #\$ (tagging-reader 'ungexp 'ungexp-splicing))
(read-hash-extend #\+ (tagging-reader 'ungexp-native 'ungexp-native-splicing))

(define (read-forms file)
  (call-with-input-file file
    (lambda (port)
      (let loop ((forms '()))
        (let ((form (read port)))
          (if (eof-object? form)
              (reverse forms)
              (loop (cons form forms))))))))
