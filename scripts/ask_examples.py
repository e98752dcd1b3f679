"""Answer a few Korean questions with a trained kqa model through the Python API.

python scripts/ask_examples.py outputs/offline-e5-small/best
"""

from __future__ import annotations

import sys

from kqa import QuestionAnswerer

# (context, [(question, the answer a reader expects)]): the gold answers printed beside the model's.
EXAMPLES = [
    (
        "아이작 뉴턴은 17세기 영국의 수학자이자 물리학자로, 미적분학과 고전역학의 기초를 다졌다.",
        [
            ("아이작 뉴턴은 어떤 학문에서 중요한 기여를 했는가?", "미적분학과 고전역학"),
            ("아이작 뉴턴은 어느 나라 사람인가?", "영국"),
            ("뉴턴은 몇 세기의 인물인가?", "17세기"),
        ],
    ),
    (
        "대한민국의 수도는 서울이며, 가장 큰 항구 도시는 부산이다. 서울특별시는 한강을 끼고 있다.",
        [
            ("대한민국의 수도는 어디인가?", "서울"),
            ("대한민국에서 가장 큰 항구 도시는 어디인가?", "부산"),
            ("서울을 흐르는 강은 무엇인가?", "한강"),
        ],
    ),
    (
        "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다. 훈민정음은 오늘날 한글이라 불린다.",
        [
            ("훈민정음을 창제한 사람은 누구인가?", "세종대왕"),
            ("훈민정음은 언제 반포되었는가?", "1446년"),
            ("훈민정음은 오늘날 무엇이라 불리는가?", "한글"),
        ],
    ),
]


def main(model_dir: str) -> int:
    qa = QuestionAnswerer.from_pretrained(model_dir)
    right = 0
    for context, pairs in EXAMPLES:
        print(f"\n문맥: {context}")
        answers = qa([q for q, _ in pairs], context)
        for (question, gold), answer in zip(pairs, answers):
            assert context[answer.start : answer.end] == answer.text  # always a span of the given context
            verdict = "=" if answer.text == gold else "≠"
            right += answer.text == gold
            print(
                f"  Q: {question}\n  A: {answer.text!r} {verdict} gold {gold!r}  [{answer.start}:{answer.end}]  "
                f"p={answer.probability:.2f} score={answer.score:.2f}"
            )
    print(f"\n{right} of {sum(len(p) for _, p in EXAMPLES)} answers equal the gold answer")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
