// Hand-written lines that probe BERT's rules: accents, case, CJK, punctuation, whitespace and control
// characters, normalization, long words, literal special tokens and invalid UTF-8.
#pragma once

#include <string>
#include <vector>

namespace electra::text::testing {

inline std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

inline std::vector<std::string> edge_lines() {
  return {
      "H\u00e9llo W\u00f6rld! \u00c0\u00c9\u00ce\u00d5\u00dc \u00e0\u00e9\u00ee\u00f5\u00fc \u01c4 \u01c5 \u01c6",
      "na\u00efve caf\u00e9 r\u00e9sum\u00e9 co\u00f6perate fa\u00e7ade",
      "decomposed: cafe\u0301 A\u030a e\u0301\u0302 o\u0323\u0302 o\u0302\u0323 \u1e69 s\u0323\u0307 s\u0307\u0323",
      "\u039f\u0394\u039f\u03a3 \u03a3\u03af\u03c3\u03c5\u03c6\u03bf\u03c2 \u03a3\u0391\u03a3 "
      "\u1f48\u0394\u03a5\u03a3\u03a3\u0395\u038e\u03a3",
      "\u0130stanbul I\u0130\u0131I \u01c5ungla I\u0307",
      "Stra\u00dfe STRASSE \ufb01 \ufb00 \u1e9e",
      "\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5\uff0c\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002 "
      "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4.",
      "compat \uf900 \uf901\uf902 \U0002f800 ext-B \U00020000x",
      "\uff21\uff42\uff43\uff11\uff12\uff13 full-width",
      "emoji \U0001f600\U0001f44d\U0001f3fd family \U0001f468\u200d\U0001f469\u200d\U0001f467",
      std::string("control\x01"
                  "chars\x7f"
                  "here\u200b zero\u200cwidth\ufeff"
                  "bom nul") +
          '\0' + "x",
      "tabs\tand\rreturns\u00a0nbsp\u3000ideographic\u2028line\u2029para\xc2\x85"
      "nel\x0b\x0c"
      "vt",
      "quotes \u201csmart\u201d \u2018single\u2019 \u00abguillemets\u00bb \u2014 dashes \u2013 \u2039\u203a "
      "\u00bfqu\u00e9? \u00a1s\u00ed!",
      "math \u2260 \u2264 =\u0338 <\u0338 x\u00b2 \u00bd \u2211 \u1fefa",
      "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0420\u0443\u0441\u0441\u043a\u0438\u0439 "
      "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea "
      "\u0939\u093f\u0928\u094d\u0926\u0940 \u0e44\u0e17\u0e22",
      "under_score hyphen-ated dot.ted a/b c\\d @user #tag $5 100% ^caret `tick` ~tilde |pipe {brace} [x]",
      "jamo \u1100\u1161\u11a8 \ud55c",
      "private \ue000 use, tag \U000e0001 char, ext-G \U00030000 ok",
      "[CLS] [SEP] [MASK] [UNK] [PAD] literal ##hash",
      "",
      "   \t  ",
      "long " + repeat("a", 201) + " and " + repeat("b", 150) + " then " + repeat("c", 200) + " end",
      "accented " + repeat("\u00e9", 200) + " kept, " + repeat("\u00e9", 201) + " too long",
      // Invalid UTF-8: the bytes are dropped and the text after them is intact.
      "abc\xff"
      "def ghi",
      "truncated \xe2\x82"
      "next word",
      "overlong \xc0\xaf"
      "x \xe0\x80\xaf"
      "y",
      "surrogate \xed\xa0\x80"
      "z \xed\xbf\xbf"
      "w",
      "lone \x80\x80"
      "cont \xbf"
      "end",
      "four-byte cut \xf0\x9f\x98"
      "z \xf4\x90\x80\x80"
      "above",
      "ends with a cut \xe4\xb8",
  };
}

}  // namespace electra::text::testing
