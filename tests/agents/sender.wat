;; sender.wat — test fixture for the caxton.send import. Sends the content
;; to the agent named "echo" and replies with the i32 that send returned,
;; in signed decimal (e.g. "0", "-4").
(module
  (import "caxton" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) "echo")  ;; 4 bytes

  ;; Bump allocator: static data lives below 1024, the heap starts there
  ;; and is reset by every caxton_alloc call (once per message).
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
    (local $r i32) (local $u i32) (local $buf i32) (local $p i32) (local $end i32)
    (local.set $r (call $send (i32.const 16) (i32.const 4)
                              (local.get $ptr) (local.get $len)))
    ;; "-2147483648" is the longest: 11 bytes
    (local.set $buf (call $bump (i32.const 11)))
    (if (i32.eqz (local.get $buf)) (then (return (i64.const 0))))
    (local.set $end (i32.add (local.get $buf) (i32.const 11)))
    (local.set $p (local.get $end))
    ;; magnitude as unsigned (0 - INT_MIN wraps to 2^31, which is right)
    (local.set $u (select (i32.sub (i32.const 0) (local.get $r)) (local.get $r)
                          (i32.lt_s (local.get $r) (i32.const 0))))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 0x30) (i32.rem_u (local.get $u) (i32.const 10))))
      (local.set $u (i32.div_u (local.get $u) (i32.const 10)))
      (br_if $digit (local.get $u)))
    (if (i32.lt_s (local.get $r) (i32.const 0))
      (then
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (i32.store8 (local.get $p) (i32.const 0x2D))))  ;; '-'
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (local.get $end) (local.get $p)))))
)
