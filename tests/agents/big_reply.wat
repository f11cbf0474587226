;; big_reply.wat — test fixture for the reply size limit. The content is a
;; decimal number N in ASCII ("2000"); the agent replies with the N bytes of
;; its memory at offset 0 (memory is 4 pages, 256 KiB, so any N up to that
;; is a valid region; bytes 0..15 hold "0123456789abcdef", the rest are
;; zero). Parsing stops at the first non-digit byte; no digits means N = 0,
;; an empty reply at offset 16.
(module
  (memory (export "memory") 4)

  (data (i32.const 0) "0123456789abcdef")

  ;; Fixed allocator: the content always goes at offset 1024 (0 if it
  ;; does not fit in the first page).
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32) (local $end i32) (local $c i32) (local $n i64)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $parsed
      (loop $digit
        (br_if $parsed (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 0x30)))
        (br_if $parsed (i32.ge_u (local.get $c) (i32.const 10)))
        (local.set $n (i64.add (i64.mul (local.get $n) (i64.const 10))
                               (i64.extend_i32_u (local.get $c))))
        ;; saturate at the largest u32
        (if (i64.gt_u (local.get $n) (i64.const 0xFFFFFFFF))
          (then (local.set $n (i64.const 0xFFFFFFFF))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (if (i64.eqz (local.get $n))
      (then (return (i64.shl (i64.const 16) (i64.const 32)))))
    ;; reply_ptr = 0, reply_len = N: the packed value is just N
    (local.get $n))
)
