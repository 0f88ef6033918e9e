;; The exported page's step (charlstm/web/local.js calls it), in WebAssembly text. scripts/build_wasm.py
;; assembles it into step.wasm, which the page embeds; a test checks that the shipped step.wasm is
;; exactly what this source assembles to.
;;
;; Addresses are byte offsets into the page's memory. The export pads every row and column, and
;; each gate's block of rows, to a multiple of 8 with zeros (charlstm/export/page.py), so no loop
;; needs a remainder: the units a block pads stay at zero state, since a zero gate input leaves
;; them there. Everything runs on 128-bit SIMD: four float32 lanes.
(module
  (memory (export "memory") 1)

  (func $lanes (param $v v128) (result f32)  ;; the sum of the four lanes
    (f32.add
      (f32.add (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
      (f32.add (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))

  ;; out[r] = sum over c of w[r * cols + c] * x[c]: a row-major float32 matrix w (rows x cols) by a
  ;; vector x. Four rows at a time share each load of x; each row sums four columns at a time in
  ;; the lanes of one f32x4, added together at the end of the row. In Node 20's V8 on one core of a
  ;; 2-core Xeon: 10 billion multiply-adds a second on a 1024 x 256 matrix, 5.6 on 2048 x 512 (4 MB,
  ;; more than the core's cache: reading it bounds the product), against 0.8 for plain JavaScript.
  (func (export "matvec") (param $w i32) (param $x i32) (param $out i32) (param $rows i32) (param $cols i32)
    (local $stride i32) (local $x_end i32) (local $out_end i32) (local $xp i32)
    (local $w0 i32) (local $w1 i32) (local $w2 i32) (local $w3 i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $xv v128)
    (local.set $stride (i32.shl (local.get $cols) (i32.const 2)))  ;; bytes per row
    (local.set $x_end (i32.add (local.get $x) (local.get $stride)))
    (local.set $out_end (i32.add (local.get $out) (i32.shl (local.get $rows) (i32.const 2))))
    (local.set $w0 (local.get $w))
    (block $rows_done
      (loop $four_rows
        (br_if $rows_done (i32.ge_u (local.get $out) (local.get $out_end)))
        (local.set $w1 (i32.add (local.get $w0) (local.get $stride)))
        (local.set $w2 (i32.add (local.get $w1) (local.get $stride)))
        (local.set $w3 (i32.add (local.get $w2) (local.get $stride)))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $xp (local.get $x))
        (block $cols_done
          (loop $four_cols
            (br_if $cols_done (i32.ge_u (local.get $xp) (local.get $x_end)))
            (local.set $xv (v128.load (local.get $xp)))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (v128.load (local.get $w0)) (local.get $xv))))
            (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (v128.load (local.get $w1)) (local.get $xv))))
            (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (v128.load (local.get $w2)) (local.get $xv))))
            (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (v128.load (local.get $w3)) (local.get $xv))))
            (local.set $xp (i32.add (local.get $xp) (i32.const 16)))
            (local.set $w0 (i32.add (local.get $w0) (i32.const 16)))
            (local.set $w1 (i32.add (local.get $w1) (i32.const 16)))
            (local.set $w2 (i32.add (local.get $w2) (i32.const 16)))
            (local.set $w3 (i32.add (local.get $w3) (i32.const 16)))
            (br $four_cols)))
        (f32.store offset=0 (local.get $out) (call $lanes (local.get $a0)))
        (f32.store offset=4 (local.get $out) (call $lanes (local.get $a1)))
        (f32.store offset=8 (local.get $out) (call $lanes (local.get $a2)))
        (f32.store offset=12 (local.get $out) (call $lanes (local.get $a3)))
        (local.set $w0 (local.get $w3))  ;; w3 has walked to the end of its row: the next four rows start there
        (local.set $out (i32.add (local.get $out) (i32.const 16)))
        (br $four_rows))))

  ;; matvec for a matrix of bfloat16 (each the top half of a float32): eight columns a load, widened
  ;; to two f32x4 by shifting each 16 bits up. Half the bytes to read: the products themselves are
  ;; the float32 ones of the widened weights, as charlstm's bf16 step computes them.
  (func (export "matvec_bf16") (param $w i32) (param $x i32) (param $out i32) (param $rows i32) (param $cols i32)
    (local $stride i32) (local $x_end i32) (local $out_end i32) (local $xp i32)
    (local $w0 i32) (local $w1 i32) (local $w2 i32) (local $w3 i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $xl v128) (local $xh v128) (local $v v128)
    (local.set $stride (i32.shl (local.get $cols) (i32.const 1)))  ;; bytes per row
    (local.set $x_end (i32.add (local.get $x) (i32.shl (local.get $cols) (i32.const 2))))
    (local.set $out_end (i32.add (local.get $out) (i32.shl (local.get $rows) (i32.const 2))))
    (local.set $w0 (local.get $w))
    (block $rows_done
      (loop $four_rows
        (br_if $rows_done (i32.ge_u (local.get $out) (local.get $out_end)))
        (local.set $w1 (i32.add (local.get $w0) (local.get $stride)))
        (local.set $w2 (i32.add (local.get $w1) (local.get $stride)))
        (local.set $w3 (i32.add (local.get $w2) (local.get $stride)))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $xp (local.get $x))
        (block $cols_done
          (loop $eight_cols
            (br_if $cols_done (i32.ge_u (local.get $xp) (local.get $x_end)))
            (local.set $xl (v128.load offset=0 (local.get $xp)))
            (local.set $xh (v128.load offset=16 (local.get $xp)))
            (local.set $v (v128.load (local.get $w0)))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $v)) (i32.const 16)) (local.get $xl))))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $v)) (i32.const 16)) (local.get $xh))))
            (local.set $v (v128.load (local.get $w1)))
            (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $v)) (i32.const 16)) (local.get $xl))))
            (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $v)) (i32.const 16)) (local.get $xh))))
            (local.set $v (v128.load (local.get $w2)))
            (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $v)) (i32.const 16)) (local.get $xl))))
            (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $v)) (i32.const 16)) (local.get $xh))))
            (local.set $v (v128.load (local.get $w3)))
            (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $v)) (i32.const 16)) (local.get $xl))))
            (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $v)) (i32.const 16)) (local.get $xh))))
            (local.set $xp (i32.add (local.get $xp) (i32.const 32)))
            (local.set $w0 (i32.add (local.get $w0) (i32.const 16)))
            (local.set $w1 (i32.add (local.get $w1) (i32.const 16)))
            (local.set $w2 (i32.add (local.get $w2) (i32.const 16)))
            (local.set $w3 (i32.add (local.get $w3) (i32.const 16)))
            (br $eight_cols)))
        (f32.store offset=0 (local.get $out) (call $lanes (local.get $a0)))
        (f32.store offset=4 (local.get $out) (call $lanes (local.get $a1)))
        (f32.store offset=8 (local.get $out) (call $lanes (local.get $a2)))
        (f32.store offset=12 (local.get $out) (call $lanes (local.get $a3)))
        (local.set $w0 (local.get $w3))
        (local.set $out (i32.add (local.get $out) (i32.const 16)))
        (br $four_rows))))

  ;; tanh in float32 arithmetic, four at a time: charlstm's tanh32 (charlstm/sampling/kernels.py),
  ;; |error| < 2e-7. tanh(a) = (1 - t) / (1 + t) with t = e^(-2a) = 2^-k e^r, r = k ln2 - 2a.
  (func $tanh (param $x v128) (result v128)
    (local $a v128) (local $k v128) (local $kf v128) (local $r v128) (local $e v128) (local $t v128)
    (local.set $a (f32x4.min (f32x4.abs (local.get $x)) (f32x4.splat (f32.const 9))))  ;; tanh(9) rounds to 1
    (local.set $k (i32x4.trunc_sat_f32x4_s
      (f32x4.add (f32x4.mul (local.get $a) (f32x4.splat (f32.const 2.885390043258667))) (f32x4.splat (f32.const 0.5)))))
    (local.set $kf (f32x4.convert_i32x4_s (local.get $k)))
    (local.set $r (f32x4.add
      (f32x4.sub (f32x4.mul (local.get $kf) (f32x4.splat (f32.const 0.693145751953125)))
                 (f32x4.mul (f32x4.splat (f32.const 2)) (local.get $a)))
      (f32x4.mul (local.get $kf) (f32x4.splat (f32.const 1.428606765330187e-06)))))
    (local.set $e (f32x4.splat (f32.const 0.00019841270113829523)))  ;; e^r, by Horner: 1/7! first
    (local.set $e (f32x4.add (f32x4.splat (f32.const 0.0013888889225199819)) (f32x4.mul (local.get $r) (local.get $e))))
    (local.set $e (f32x4.add (f32x4.splat (f32.const 0.008333333767950535)) (f32x4.mul (local.get $r) (local.get $e))))
    (local.set $e (f32x4.add (f32x4.splat (f32.const 0.0416666679084301)) (f32x4.mul (local.get $r) (local.get $e))))
    (local.set $e (f32x4.add (f32x4.splat (f32.const 0.1666666716337204)) (f32x4.mul (local.get $r) (local.get $e))))
    (local.set $e (f32x4.add (f32x4.splat (f32.const 0.5)) (f32x4.mul (local.get $r) (local.get $e))))
    (local.set $e (f32x4.add (f32x4.splat (f32.const 1)) (f32x4.mul (local.get $r) (local.get $e))))
    (local.set $e (f32x4.add (f32x4.splat (f32.const 1)) (f32x4.mul (local.get $r) (local.get $e))))
    ;; times 2^-k, exactly: a float32 whose exponent field is 127 - k
    (local.set $e (f32x4.mul (local.get $e)
      (i32x4.shl (i32x4.sub (i32x4.splat (i32.const 127)) (local.get $k)) (i32.const 23))))
    (local.set $t (f32x4.div (f32x4.sub (f32x4.splat (f32.const 1)) (local.get $e))
                             (f32x4.add (f32x4.splat (f32.const 1)) (local.get $e))))
    (local.set $t (v128.bitselect  ;; near 0, a * (1 - a^2 / 3): no cancellation
      (local.get $t)
      (f32x4.mul (local.get $a) (f32x4.sub (f32x4.splat (f32.const 1))
        (f32x4.mul (f32x4.mul (local.get $a) (local.get $a)) (f32x4.splat (f32.const 0.3333333432674408)))))
      (f32x4.gt (local.get $a) (f32x4.splat (f32.const 0.0010000000474974513)))))
    (v128.or (local.get $t) (v128.and (local.get $x) (v128.const i32x4 0x80000000 0x80000000 0x80000000 0x80000000))))

  (func $sigmoid_of_half (param $z v128) (result v128)  ;; sigmoid(2z) = (1 + tanh(z)) / 2: the rows are halved
    (f32x4.add (f32x4.mul (f32x4.splat (f32.const 0.5)) (call $tanh (local.get $z))) (f32x4.splat (f32.const 0.5))))

  ;; The LSTM's gate math for n units (a multiple of 4): pre-activations g (4 blocks of n: input,
  ;; forget, output, cell, the sigmoid rows halved) plus bias -> c and h in place. peep (3 blocks of
  ;; n: p_i, p_f, p_o, halved) is read as charlstm's peephole cell reads it; zeros for a plain LSTM.
  (func (export "lstm_cell") (param $g i32) (param $bias i32) (param $peep i32) (param $c i32) (param $h i32) (param $n i32)
    (local $block i32) (local $j i32) (local $end i32) (local $cv v128) (local $i v128) (local $f v128) (local $o v128)
    (local.set $block (i32.shl (local.get $n) (i32.const 2)))  ;; bytes per block
    (local.set $end (local.get $block))
    (block $done
      (loop $four_units
        (br_if $done (i32.ge_u (local.get $j) (local.get $end)))
        (local.set $cv (v128.load (i32.add (local.get $c) (local.get $j))))
        (local.set $i (call $sigmoid_of_half (f32x4.add
          (f32x4.add (v128.load (i32.add (local.get $g) (local.get $j))) (v128.load (i32.add (local.get $bias) (local.get $j))))
          (f32x4.mul (v128.load (i32.add (local.get $peep) (local.get $j))) (local.get $cv)))))
        (local.set $f (call $sigmoid_of_half (f32x4.add
          (f32x4.add (v128.load (i32.add (local.get $g) (i32.add (local.get $block) (local.get $j))))
                     (v128.load (i32.add (local.get $bias) (i32.add (local.get $block) (local.get $j)))))
          (f32x4.mul (v128.load (i32.add (local.get $peep) (i32.add (local.get $block) (local.get $j)))) (local.get $cv)))))
        (local.set $cv (f32x4.add (f32x4.mul (local.get $f) (local.get $cv)) (f32x4.mul (local.get $i) (call $tanh
          (f32x4.add (v128.load (i32.add (local.get $g) (i32.add (i32.mul (local.get $block) (i32.const 3)) (local.get $j))))
                     (v128.load (i32.add (local.get $bias) (i32.add (i32.mul (local.get $block) (i32.const 3)) (local.get $j)))))))))
        (v128.store (i32.add (local.get $c) (local.get $j)) (local.get $cv))
        (local.set $o (call $sigmoid_of_half (f32x4.add
          (f32x4.add (v128.load (i32.add (local.get $g) (i32.add (i32.shl (local.get $block) (i32.const 1)) (local.get $j))))
                     (v128.load (i32.add (local.get $bias) (i32.add (i32.shl (local.get $block) (i32.const 1)) (local.get $j)))))
          (f32x4.mul (v128.load (i32.add (local.get $peep) (i32.add (i32.shl (local.get $block) (i32.const 1)) (local.get $j))))
                     (local.get $cv)))))
        (v128.store (i32.add (local.get $h) (local.get $j)) (f32x4.mul (local.get $o) (call $tanh (local.get $cv))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br $four_units))))

  ;; The GRU's gate math (nn.GRU's equations) for n units: g + bias hold the reset and update
  ;; pre-activations (halved), then the candidate's input part and its recurrent part, kept apart
  ;; because the reset gate scales only the latter -> h in place.
  (func (export "gru_cell") (param $g i32) (param $bias i32) (param $h i32) (param $n i32)
    (local $block i32) (local $j i32) (local $r v128) (local $z v128) (local $cand v128) (local $hv v128)
    (local.set $block (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $four_units
        (br_if $done (i32.ge_u (local.get $j) (local.get $block)))
        (local.set $r (call $sigmoid_of_half (f32x4.add
          (v128.load (i32.add (local.get $g) (local.get $j))) (v128.load (i32.add (local.get $bias) (local.get $j))))))
        (local.set $z (call $sigmoid_of_half (f32x4.add
          (v128.load (i32.add (local.get $g) (i32.add (local.get $block) (local.get $j))))
          (v128.load (i32.add (local.get $bias) (i32.add (local.get $block) (local.get $j)))))))
        (local.set $cand (call $tanh (f32x4.add
          (f32x4.add (v128.load (i32.add (local.get $g) (i32.add (i32.shl (local.get $block) (i32.const 1)) (local.get $j))))
                     (v128.load (i32.add (local.get $bias) (i32.add (i32.shl (local.get $block) (i32.const 1)) (local.get $j)))))
          (f32x4.mul (local.get $r) (f32x4.add
            (v128.load (i32.add (local.get $g) (i32.add (i32.mul (local.get $block) (i32.const 3)) (local.get $j))))
            (v128.load (i32.add (local.get $bias) (i32.add (i32.mul (local.get $block) (i32.const 3)) (local.get $j)))))))))
        (local.set $hv (v128.load (i32.add (local.get $h) (local.get $j))))
        (v128.store (i32.add (local.get $h) (local.get $j))  ;; (1 - z) * candidate + z * h
          (f32x4.add (local.get $cand) (f32x4.mul (local.get $z) (f32x4.sub (local.get $hv) (local.get $cand)))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br $four_units))))
)
