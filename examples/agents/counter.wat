;; counter.wat — Caxton example agent (ABI version 1).
;;
;; Counts the messages it has handled and replies with the count, in
;; decimal, including the current message: "1", "2", "3", ...
;; The count lives in a global, so it persists across messages for as long
;; as the instance lives. (If a message traps, the host replaces the
;; instance and the count starts again from 0.)
(module
  (memory (export "memory") 1)

  (global $count (mut i32) (i32.const 0))

  ;; Bump allocator, reset on every caxton_alloc (once per message).
  (global $heap (mut i32) (i32.const 1024))

  (func $bump (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $have i64)
    (local.set $ptr (global.get $heap))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr))
                             (i64.extend_i32_u (local.get $len))))
    (if (i64.ge_u (local.get $end) (i64.const 0x100000000))
      (then (return (i32.const 0))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have))
                                      (i64.const 0xFFFF))
                             (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))

  (func (export "caxton_alloc") (param $len i32) (result i32)
    (global.set $heap (i32.const 1024))
    (call $bump (local.get $len)))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $buf i32) (local $p i32) (local $n i32) (local $out_len i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    ;; an unsigned 32-bit number has at most 10 decimal digits
    (local.set $buf (call $bump (i32.const 10)))
    (if (i32.eqz (local.get $buf)) (then (return (i64.const 0))))
    ;; write the digits backwards from the end of the buffer
    (local.set $p (i32.add (local.get $buf) (i32.const 10)))
    (local.set $n (global.get $count))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 0x30) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (local.set $out_len (i32.sub (i32.add (local.get $buf) (i32.const 10)) (local.get $p)))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
      (i64.extend_i32_u (local.get $out_len))))
)
