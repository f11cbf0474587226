;; hog.wat — test fixture: a memory bomb that touches what it gets. The
;; content is a decimal number of MiB in ASCII ("64"); the agent grows its
;; memory by that many MiB worth of 64 KiB pages in one memory.grow and
;; writes one byte into every 4 KiB OS page of it, so the memory is really committed
;; (not just reserved). Replies "ok", or "grow-failed" if memory.grow
;; returned -1. Parsing stops at the first non-digit byte; more than
;; 4096 MiB is treated as a failed grow.
(module
  (memory (export "memory") 1)

  (data (i32.const 16) "ok")           ;; 2 bytes
  (data (i32.const 32) "grow-failed")  ;; 11 bytes

  ;; Fixed allocator: the content always goes at offset 1024 (0 if it
  ;; does not fit in the first page).
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $len) (i32.const 64512))
      (then (i32.const 0))
      (else (i32.const 1024))))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32) (local $end i32) (local $c i32) (local $mib i64)
    (local $pages i32) (local $old i32) (local $i i32)
    ;; parse the leading decimal digits
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $parsed
      (loop $digit
        (br_if $parsed (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 0x30)))
        (br_if $parsed (i32.ge_u (local.get $c) (i32.const 10)))
        (local.set $mib (i64.add (i64.mul (local.get $mib) (i64.const 10))
                                 (i64.extend_i32_u (local.get $c))))
        ;; saturate: anything above 4096 MiB cannot be grown anyway
        (if (i64.gt_u (local.get $mib) (i64.const 4097))
          (then (local.set $mib (i64.const 4097))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (if (i64.gt_u (local.get $mib) (i64.const 4096))
      (then (return (call $pack (i32.const 32) (i32.const 11)))))
    ;; 1 MiB = 16 pages of 64 KiB
    (local.set $pages (i32.mul (i32.wrap_i64 (local.get $mib)) (i32.const 16)))
    (local.set $old (memory.grow (local.get $pages)))
    (if (i32.eq (local.get $old) (i32.const -1))
      (then (return (call $pack (i32.const 32) (i32.const 11)))))
    ;; touch one byte in every 4 KiB OS page (16 per wasm page), so that the
    ;; host really has to provide the memory
    (block $touched
      (loop $page
        (br_if $touched (i32.ge_u (local.get $i) (i32.mul (local.get $pages) (i32.const 16))))
        (i32.store8
          (i32.add (i32.shl (local.get $old) (i32.const 16)) (i32.shl (local.get $i) (i32.const 12)))
          (i32.const 0xAA))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $page)))
    (call $pack (i32.const 16) (i32.const 2)))
)
