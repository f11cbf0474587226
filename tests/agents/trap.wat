;; trap.wat — test fixture: traps on demand, to check that a trap fails
;; only that message and that the host replaces the instance.
;;   "unreachable" -> executes `unreachable`
;;   "div0"        -> i32.div_s by zero (integer divide by zero)
;;   "recurse"     -> unbounded recursion (call stack exhausted)
;;   "grow"        -> memory.grow by one page in a loop until it returns -1,
;;                    then replies "grow-failed" (a memory bomb that the
;;                    host's memory limit keeps contained)
;;   anything else -> echo
(module
  (memory (export "memory") 1)

  (data (i32.const 16) "unreachable")  ;; 11 bytes
  (data (i32.const 32) "div0")         ;; 4
  (data (i32.const 48) "recurse")      ;; 7
  (data (i32.const 64) "grow")         ;; 4
  (data (i32.const 80) "grow-failed")  ;; 11

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

  ;; (ptr << 32) | len
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; 1 if [a, a+alen) equals [b, b+blen), else 0
  (func $eq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $alen) (local.get $blen))
      (then (return (i32.const 0))))
    (block $diff
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $alen))
          (then (return (i32.const 1))))
        (br_if $diff (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                             (i32.load8_u (i32.add (local.get $b) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; never returns: each call recurses before it can add
  (func $recurse (param $n i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $n) (i32.const 1)))
             (local.get $n)))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 16) (i32.const 11))
      (then (unreachable)))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 32) (i32.const 4))
      ;; len is 4 here, so the divisor (len - 4) is a runtime zero
      (then (return (call $pack (local.get $ptr)
        (i32.div_s (local.get $len) (i32.sub (local.get $len) (i32.const 4)))))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 48) (i32.const 7))
      (then (return (call $pack (local.get $ptr) (call $recurse (i32.const 0))))))
    (if (call $eq (local.get $ptr) (local.get $len) (i32.const 64) (i32.const 4))
      (then
        (loop $more
          (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        (return (call $pack (i32.const 80) (i32.const 11)))))
    (call $pack (local.get $ptr) (local.get $len)))
)
