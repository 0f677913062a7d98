"""Write compression_core/texts/sentences.txt: the project's shipped English sentences for text fidelity.

Every word list and template below was written for this project (no text was copied from anywhere), so the file is
covered by the project's MIT licence. Ten topics each have their own people, actions, things and places; sentences
are drawn from eight sentence shapes (statements, questions, plans, conditionals, contrasts) with a fixed seed, so
sentences on one topic are near each other in meaning and a neighbour search has real structure to keep.

Run: `python scripts/make_sentences.py` (rewrites the file; the same seed gives the same bytes).
"""
from __future__ import annotations

import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "compression_core" / "texts" / "sentences.txt"
COUNT = 2400
SEED = 0

# topic -> (people, (base verb, past verb) pairs that take any of the objects, objects, places)
TOPICS = {
    "kitchen": (["my grandmother", "the young chef", "our neighbour", "the baker", "a tired student", "my brother"],
                [("chop", "chopped"), ("wash", "washed"), ("season", "seasoned"), ("taste", "tasted"),
                 ("cook", "cooked"), ("slice", "sliced")],
                ["the onions", "a basket of tomatoes", "the fresh fish", "a bowl of mushrooms", "the green beans",
                 "two large potatoes"],
                ["in the small kitchen", "at the market stall", "beside the old stove", "in the restaurant"]),
    "weather": (["the forecaster", "a farmer", "the pilot", "the ship's captain", "an old fisherman",
                 "the mountain guide"],
                [("watch", "watched"), ("measure", "measured"), ("predict", "predicted"), ("fear", "feared"),
                 ("report", "reported"), ("study", "studied")],
                ["the heavy rain", "a sudden storm", "the cold north wind", "the thick morning fog",
                 "a week of heat", "the first snow of winter"],
                ["over the valley", "along the coast", "above the airport", "across the northern hills"]),
    "travel": (["the backpacker", "a family of four", "my cousin", "the tour guide", "two old friends",
                "the business traveller"],
               [("book", "booked"), ("miss", "missed"), ("catch", "caught"), ("board", "boarded"),
                ("cancel", "cancelled"), ("find", "found")],
               ["the night train", "a cheap flight", "the last ferry", "a room with a view", "the bus to the border",
                "a seat by the window"],
               ["at the central station", "in a foreign city", "near the harbour", "at the crowded airport"]),
    "science": (["the chemist", "a graduate student", "the research team", "the astronomer", "our biology teacher",
                 "the lab technician"],
                [("test", "tested"), ("record", "recorded"), ("observe", "observed"), ("repeat", "repeated"),
                 ("publish", "published"), ("question", "questioned")],
                ["the new theory", "a strange signal", "the results of the experiment", "a sample of pond water",
                 "the growth of the bacteria", "the orbit of a comet"],
                ["in the laboratory", "at the observatory", "in the field station", "at the university"]),
    "sport": (["the goalkeeper", "our captain", "the young sprinter", "the coach", "a veteran cyclist",
               "the tennis player"],
              [("win", "won"), ("lose", "lost"), ("train for", "trained for"), ("watch", "watched"),
               ("prepare for", "prepared for"), ("remember", "remembered")],
              ["the final match", "a long race", "the championship", "the penalty shootout", "the season opener",
               "a hard mountain stage"],
              ["at the stadium", "on the muddy pitch", "at the indoor arena", "on the track"]),
    "garden": (["my aunt", "the gardener", "a retired teacher", "the children", "our landlord", "the volunteer"],
               [("plant", "planted"), ("water", "watered"), ("prune", "pruned"), ("move", "moved"),
                ("protect", "protected"), ("pick", "picked")],
               ["the rose bushes", "a row of carrots", "the young apple tree", "the herbs", "the sunflowers",
                "a bed of tulips"],
               ["in the back garden", "behind the shed", "along the fence", "in the community garden"]),
    "office": (["the manager", "a new employee", "the accountant", "our team leader", "the receptionist",
                "the engineer"],
               [("review", "reviewed"), ("sign", "signed"), ("send", "sent"), ("rewrite", "rewrote"),
                ("approve", "approved"), ("print", "printed")],
               ["the monthly report", "a long contract", "the budget", "the meeting notes", "an urgent email",
                "the project plan"],
               ["at the front desk", "in the meeting room", "at home", "in the open office"]),
    "music": (["the pianist", "a street musician", "the choir", "my sister", "the drummer", "the old violinist"],
              [("play", "played"), ("practise", "practised"), ("record", "recorded"), ("compose", "composed"),
               ("rehearse", "rehearsed"), ("perform", "performed")],
              ["a quiet song", "the new symphony", "an old folk tune", "the opening piece", "a short waltz",
               "the national anthem"],
              ["in the concert hall", "at the church", "on the street corner", "in the recording studio"]),
    "animals": (["the vet", "a shepherd", "the zookeeper", "my father", "the farmer's son", "a wildlife photographer"],
                [("feed", "fed"), ("follow", "followed"), ("count", "counted"), ("calm", "calmed"),
                 ("photograph", "photographed"), ("rescue", "rescued")],
                ["the lost sheep", "a family of foxes", "the old horse", "a flock of geese", "the injured owl",
                 "the stray cat"],
                ["in the barn", "at the edge of the forest", "by the river", "in the wildlife park"]),
    "computers": (["the programmer", "a security expert", "the support team", "my colleague", "the student",
                   "the system administrator"],
                  [("fix", "fixed"), ("update", "updated"), ("restart", "restarted"), ("test", "tested"),
                   ("back up", "backed up"), ("install", "installed")],
                  ["the database server", "a slow laptop", "the company network", "the mobile app",
                   "the old printer", "a broken website"],
                  ["in the server room", "at the help desk", "from home", "in the data centre"]),
}
PAST_TIMES = ["yesterday", "last week", "early this morning", "two days ago", "on Sunday", "late last night"]
FUTURE_TIMES = ["tomorrow", "next week", "on Friday", "after lunch", "next month", "before the holidays"]
FEELINGS = ["happy", "worried", "surprised", "relieved", "proud", "disappointed"]


def sentence(rng: random.Random, topic: str) -> str:
    """One sentence on a topic, from one of eight shapes."""
    people, verbs, things, places = TOPICS[topic]
    who, other = rng.sample(people, 2)
    (base, past), what, where = rng.choice(verbs), rng.choice(things), rng.choice(places)
    shape = rng.randrange(8)
    text = [
        f"{who} {past} {what} {where} {rng.choice(PAST_TIMES)}.",
        f"{rng.choice(PAST_TIMES)}, {who} {past} {what} {where}.",
        f"why did {who} {base} {what} {where}?",
        f"{who} will {base} {what} {rng.choice(FUTURE_TIMES)}.",
        f"if {who} {past} {what}, {other} would be {rng.choice(FEELINGS)}.",
        f"{who} never {past} {what} {where}, but {other} did.",
        f"{other} was {rng.choice(FEELINGS)} when {who} {past} {what}.",
        f"do you think {who} should {base} {what} {rng.choice(FUTURE_TIMES)}?",
    ][shape]
    return text[0].upper() + text[1:]


def make(count: int = COUNT, seed: int = SEED) -> list[str]:
    """`count` distinct sentences, topics taken in turn, drawn with a fixed seed."""
    rng, seen, topics = random.Random(seed), set(), list(TOPICS)
    out = []
    while len(out) < count:
        line = sentence(rng, topics[len(out) % len(topics)])
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(make()) + "\n", encoding="utf-8")
    print(f"wrote {COUNT} sentences to {OUT}")
