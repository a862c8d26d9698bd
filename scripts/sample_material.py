# ruff: noqa: E501  (phrase material: long literal strings read better unwrapped)
"""Phrase material for scripts/make_sample_data.py, written for this project."""

WORDS = [
    "apple", "banana", "cherry", "window", "garden", "planet", "river", "mountain", "pencil", "rocket",
    "yellow", "orange", "violet", "kitchen", "library", "teacher", "engine", "bridge", "island", "forest",
    "candle", "mirror", "winter", "summer", "autumn", "spring", "ocean", "desert", "castle", "dragon",
    "guitar", "violin", "compass", "lantern", "harbor", "meadow", "puzzle", "silver", "thunder", "whisper",
    "pyramid", "volcano", "giraffe", "penguin", "dolphin", "tomato", "pepper", "noodle", "biscuit", "camera",
    "jacket", "blanket", "pillow", "bottle", "marble", "tunnel", "ladder", "magnet", "anchor", "feather",
]  # fmt: skip

CODE = {
    "factorial": {
        "ask": "returns the factorial of n",
        "complexity": "O(n): one multiplication per number from 2 to n",
        "explain": "It multiplies the numbers from 2 up to n, and returns 1 for n = 0 or n = 1.",
        "code": {
            "python": "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n"
            "    return result",
            "javascript": "function factorial(n) {\n  let result = 1;\n  for (let i = 2; i <= n; i++) {\n"
            "    result *= i;\n  }\n  return result;\n}",
            "rust": "fn factorial(n: u64) -> u64 {\n    (2..=n).product()\n}",
            "go": "func factorial(n int) int {\n\tresult := 1\n\tfor i := 2; i <= n; i++ {\n\t\tresult *= i\n"
            "\t}\n\treturn result\n}",
            "c": "unsigned long factorial(unsigned n) {\n    unsigned long result = 1;\n"
            "    for (unsigned i = 2; i <= n; i++) {\n        result *= i;\n    }\n    return result;\n}",
        },
    },
    "fibonacci": {
        "ask": "returns the n-th Fibonacci number",
        "complexity": "O(n): the loop runs n times and keeps only two numbers",
        "explain": "It keeps the last two numbers of the sequence and moves them forward n times.",
        "code": {
            "python": "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
            "    return a",
            "javascript": "function fibonacci(n) {\n  let a = 0, b = 1;\n  for (let i = 0; i < n; i++) {\n"
            "    [a, b] = [b, a + b];\n  }\n  return a;\n}",
            "rust": "fn fibonacci(n: u32) -> u64 {\n    let (mut a, mut b) = (0u64, 1u64);\n    for _ in 0..n {\n"
            "        let next = a + b;\n        a = b;\n        b = next;\n    }\n    a\n}",
            "go": "func fibonacci(n int) int {\n\ta, b := 0, 1\n\tfor i := 0; i < n; i++ {\n\t\ta, b = b, a+b\n"
            "\t}\n\treturn a\n}",
        },
    },
    "reverse a string": {
        "ask": "reverses a string",
        "complexity": "O(n) in the length of the string",
        "explain": "It walks the characters from the end to the start and joins them into a new string.",
        "code": {
            "python": "def reverse(text):\n    return text[::-1]",
            "javascript": "function reverse(text) {\n  return [...text].reverse().join('');\n}",
            "rust": "fn reverse(text: &str) -> String {\n    text.chars().rev().collect()\n}",
            "go": "func reverse(s string) string {\n\tr := []rune(s)\n"
            "\tfor i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {\n\t\tr[i], r[j] = r[j], r[i]\n\t}\n"
            "\treturn string(r)\n}",
        },
    },
    "is prime": {
        "ask": "checks whether a number is prime",
        "complexity": "O(sqrt(n)): it only tries divisors up to the square root",
        "explain": "A number is prime when no divisor between 2 and its square root divides it evenly.",
        "code": {
            "python": "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
            "        if n % i == 0:\n            return False\n        i += 1\n    return True",
            "javascript": "function isPrime(n) {\n  if (n < 2) return false;\n  for (let i = 2; i * i <= n; i++) {\n"
            "    if (n % i === 0) return false;\n  }\n  return true;\n}",
            "c": "int is_prime(int n) {\n    if (n < 2) return 0;\n    for (int i = 2; i * i <= n; i++) {\n"
            "        if (n % i == 0) return 0;\n    }\n    return 1;\n}",
            "rust": "fn is_prime(n: u64) -> bool {\n    if n < 2 {\n        return false;\n    }\n"
            "    (2..).take_while(|i| i * i <= n).all(|i| n % i != 0)\n}",
        },
    },
    "sum of a list": {
        "ask": "returns the sum of a list of numbers",
        "complexity": "O(n): each number is added once",
        "explain": "It starts from zero and adds every element in turn.",
        "code": {
            "python": "def total(numbers):\n    result = 0\n    for x in numbers:\n        result += x\n"
            "    return result",
            "javascript": "function total(numbers) {\n  return numbers.reduce((acc, x) => acc + x, 0);\n}",
            "go": "func total(numbers []int) int {\n\tsum := 0\n\tfor _, x := range numbers {\n\t\tsum += x\n\t}\n"
            "\treturn sum\n}",
            "sql": "SELECT SUM(amount) AS total\nFROM payments;",
            "bash": 'total() {\n  local sum=0\n  for x in "$@"; do\n    sum=$((sum + x))\n  done\n'
            '  echo "$sum"\n}',
        },
    },
    "fizzbuzz": {
        "ask": "prints FizzBuzz from 1 to n",
        "complexity": "O(n): one check per number",
        "explain": "Multiples of 3 print Fizz, multiples of 5 print Buzz, and multiples of both print FizzBuzz.",
        "code": {
            "python": "def fizzbuzz(n):\n    for i in range(1, n + 1):\n        if i % 15 == 0:\n"
            '            print("FizzBuzz")\n        elif i % 3 == 0:\n            print("Fizz")\n'
            '        elif i % 5 == 0:\n            print("Buzz")\n        else:\n            print(i)',
            "javascript": "function fizzbuzz(n) {\n  for (let i = 1; i <= n; i++) {\n"
            "    if (i % 15 === 0) console.log('FizzBuzz');\n"
            "    else if (i % 3 === 0) console.log('Fizz');\n"
            "    else if (i % 5 === 0) console.log('Buzz');\n    else console.log(i);\n  }\n}",
            "c": "void fizzbuzz(int n) {\n    for (int i = 1; i <= n; i++) {\n"
            '        if (i % 15 == 0) puts("FizzBuzz");\n        else if (i % 3 == 0) puts("Fizz");\n'
            '        else if (i % 5 == 0) puts("Buzz");\n        else printf("%d\\n", i);\n    }\n}',
        },
    },
    "count words": {
        "ask": "counts the words in a sentence",
        "complexity": "O(n) in the length of the sentence",
        "explain": "It splits the sentence on whitespace and counts the pieces.",
        "code": {
            "python": "def count_words(sentence):\n    return len(sentence.split())",
            "javascript": "function countWords(sentence) {\n  return sentence.trim().split(/\\s+/).filter(Boolean).length;\n}",
            "bash": 'count_words() {\n  echo "$1" | wc -w\n}',
            "go": "func countWords(s string) int {\n\treturn len(strings.Fields(s))\n}",
        },
    },
}

CONCEPTS = {
    "photosynthesis": {
        "what": "is the process plants use to turn light, water and carbon dioxide into sugar and oxygen. "
        "It happens mostly in the leaves.",
        "points": [
            "Chlorophyll absorbs the light.",
            "Water is split and oxygen is released.",
            "The sugar stores energy the plant uses to grow.",
        ],
        "example": "a sunflower in a field makes its own food during the day and releases oxygen into the air.",
    },
    "recursion": {
        "what": "is when a function solves a problem by calling itself on a smaller version of the same problem. "
        "It needs a base case that stops the calls.",
        "points": [
            "Every call works on a smaller input.",
            "The base case returns without calling again.",
            "Without a base case the calls never end.",
        ],
        "example": "the factorial of 4 is 4 times the factorial of 3, and the factorial of 1 is simply 1.",
    },
    "compound interest": {
        "what": "is interest earned on both the original money and the interest added before. "
        "It makes savings grow faster over time.",
        "points": [
            "The balance grows by a percentage each period.",
            "Earlier interest also earns interest.",
            "Longer periods make the effect much stronger.",
        ],
        "example": "100 dollars at 10 percent per year becomes 110 after one year and 121 after two.",
    },
    "the water cycle": {
        "what": "is the continuous movement of water between the oceans, the air and the land. "
        "The sun drives it by heating water.",
        "points": [
            "Water evaporates from oceans and lakes.",
            "Vapour cools and forms clouds.",
            "Rain and snow bring the water back to the ground.",
        ],
        "example": "a puddle dries in the sun, the vapour becomes part of a cloud, and later falls as rain.",
    },
    "DNS": {
        "what": "is the system that turns names like example.com into the numeric addresses computers use. "
        "It works like a phone book for the internet.",
        "points": [
            "A resolver asks name servers step by step.",
            "Answers are cached to save time.",
            "Each record has a time to live.",
        ],
        "example": "when you type a web address, your computer asks a DNS server for its IP address first.",
    },
    "gradient descent": {
        "what": "is a method that finds the minimum of a function by taking small steps downhill. "
        "Machine learning uses it to fit model parameters.",
        "points": [
            "The gradient points uphill, so we step the other way.",
            "The learning rate sets the step size.",
            "Too large a step can overshoot the minimum.",
        ],
        "example": "to minimise x squared, start at x = 3 and repeatedly move x a little towards zero.",
    },
    "a hash table": {
        "what": "is a data structure that stores key and value pairs and finds them quickly. "
        "A hash function turns each key into a position in an array.",
        "points": [
            "Lookups take constant time on average.",
            "Two keys can land in the same slot.",
            "The table grows when it gets too full.",
        ],
        "example": "a Python dictionary maps names to phone numbers using a hash table.",
    },
    "inflation": {
        "what": "is the general rise of prices over time, which lowers what money can buy. "
        "Central banks try to keep it low and stable.",
        "points": [
            "It is measured with a basket of common goods.",
            "Moderate inflation is considered normal.",
            "Very high inflation hurts savings.",
        ],
        "example": "if bread costs 2 euros this year and 2.10 next year, its price rose by 5 percent.",
    },
    "the greenhouse effect": {
        "what": "is the warming of a planet because some gases trap heat in its atmosphere. "
        "Without it the Earth would be much colder.",
        "points": [
            "Sunlight warms the surface.",
            "The surface gives off heat as infrared light.",
            "Gases like carbon dioxide absorb part of that heat.",
        ],
        "example": "a car parked in the sun gets hot inside because heat enters more easily than it leaves.",
    },
    "version control": {
        "what": "is a way to record changes to files so you can see history and go back to earlier versions. "
        "Git is the most common tool for it.",
        "points": [
            "Each commit is a snapshot with a message.",
            "Branches let people work in parallel.",
            "Merging combines the work again.",
        ],
        "example": "a team fixes a bug on a branch, reviews it, and merges it into the main branch.",
    },
    "an API": {
        "what": "is a set of rules that lets one program ask another program for data or actions. "
        "It hides how the other program works inside.",
        "points": [
            "Requests follow a fixed format.",
            "Responses come back in a known structure.",
            "Versioning keeps old clients working.",
        ],
        "example": "a weather app asks a weather service API for tomorrow's forecast.",
    },
    "tides": {
        "what": "are the regular rise and fall of the sea level caused mainly by the Moon's gravity. "
        "Most coasts see two high tides a day.",
        "points": [
            "The Moon pulls the water towards it.",
            "The Sun adds a smaller pull.",
            "Spring tides happen when Sun and Moon line up.",
        ],
        "example": "a beach may be wide in the morning and almost covered by water six hours later.",
    },
    "binary numbers": {
        "what": "are numbers written with only the digits 0 and 1. "
        "Each position is worth twice the position to its right.",
        "points": [
            "Computers store everything in binary.",
            "The rightmost digit is worth 1.",
            "Eight binary digits make one byte.",
        ],
        "example": "the binary number 101 equals 4 + 0 + 1, which is 5.",
    },
    "vaccines": {
        "what": "train the immune system to recognise a germ without causing the disease. "
        "They protect people and slow the spread of infections.",
        "points": [
            "They show the body a harmless part of the germ.",
            "The body makes antibodies and memory cells.",
            "Later infections are fought off faster.",
        ],
        "example": "a flu shot each autumn prepares the body for the viruses expected that winter.",
    },
    "supply and demand": {
        "what": "describes how prices are set by how much of something is available and how much people want it. "
        "Prices move until the two balance.",
        "points": [
            "Higher prices reduce demand.",
            "Higher prices encourage more supply.",
            "The balance point is called the equilibrium.",
        ],
        "example": "when strawberries are in season and plentiful, their price usually drops.",
    },
    "a neural network": {
        "what": "is a model made of layers of simple units that learn patterns from examples. "
        "Each unit combines its inputs with learned weights.",
        "points": [
            "Layers turn inputs into more useful features.",
            "Training adjusts the weights to reduce errors.",
            "More data usually helps it generalise.",
        ],
        "example": "a network trained on many labelled photos learns to tell cats from dogs.",
    },
}

TIPS = {
    "better sleep": [
        "Go to bed at the same time every night.",
        "Keep the bedroom cool and dark.",
        "Avoid screens for an hour before bed.",
        "Limit coffee after lunch.",
        "Get some daylight in the morning.",
        "Keep naps short.",
        "Exercise, but not right before bed.",
    ],
    "learning a language": [
        "Practise a little every day.",
        "Learn the most common words first.",
        "Listen to podcasts in the language.",
        "Speak out loud, even alone.",
        "Use flashcards with spaced repetition.",
        "Find a conversation partner.",
        "Read simple books for children.",
    ],
    "writing clean code": [
        "Give variables clear names.",
        "Keep functions short.",
        "Write tests for new code.",
        "Remove dead code.",
        "Handle errors close to where they happen.",
        "Prefer simple solutions.",
        "Format code automatically.",
    ],
    "saving money": [
        "Track every expense for a month.",
        "Set up an automatic transfer to savings.",
        "Cook at home more often.",
        "Cancel subscriptions you do not use.",
        "Wait a day before big purchases.",
        "Compare prices before buying.",
    ],
    "studying for exams": [
        "Start early and plan your sessions.",
        "Test yourself instead of rereading.",
        "Take short breaks every 30 minutes.",
        "Explain topics to a friend.",
        "Sleep well before the exam.",
        "Do old exam questions.",
    ],
    "staying focused": [
        "Work on one task at a time.",
        "Silence notifications.",
        "Use a timer for work blocks.",
        "Keep a short to-do list.",
        "Clear your desk.",
        "Drink enough water.",
    ],
    "public speaking": [
        "Know your first sentence by heart.",
        "Practise in front of a friend.",
        "Speak slower than feels natural.",
        "Look at different people in the room.",
        "Use fewer words on your slides.",
        "Pause instead of saying um.",
    ],
    "growing tomatoes": [
        "Plant them in full sun.",
        "Water deeply at the base.",
        "Support the stems with stakes.",
        "Remove side shoots early.",
        "Add mulch to keep the soil moist.",
        "Pick them when they are fully coloured.",
    ],
}

SMALL_TALK = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi, how are you?", "I'm doing well, thank you for asking. What can I do for you?"),
    ("Good morning!", "Good morning! I hope your day is off to a great start. How can I help?"),
    ("Thank you!", "You're welcome! Let me know if there is anything else I can help with."),
    ("Thanks, that was helpful.", "I'm glad it helped! Feel free to ask if you have more questions."),
    ("What's your name?", "I'm an AI assistant. You can just call me Assistant."),
    (
        "Can you tell me a joke?",
        "Sure! Why did the scarecrow win an award? Because he was outstanding in his field.",
    ),
    ("Tell me another joke.", "Why don't eggs tell jokes? They would crack each other up."),
    ("I'm bored.", "Let's fix that! Would you like a fun fact, a riddle, or a quick word game?"),
    ("Give me a fun fact.", "Here is one: octopuses have three hearts and blue blood."),
    ("Give me a riddle.", "What has keys but can't open locks? A piano."),
    ("Goodbye!", "Goodbye! Have a wonderful day."),
    (
        "What can you do?",
        "I can answer questions, explain ideas, write and explain code, do math, and help you "
        "plan or write things. What would you like to try?",
    ),
    (
        "Do you like music?",
        "I don't listen to music myself, but I'm happy to talk about it or suggest songs.",
    ),
]

TRANSLATIONS = [
    ("good morning", "Spanish", "buenos días"),
    ("thank you", "Spanish", "gracias"),
    ("where is the station?", "Spanish", "¿dónde está la estación?"),
    ("good morning", "German", "guten Morgen"),
    ("thank you", "German", "danke"),
    ("where is the station?", "German", "wo ist der Bahnhof?"),
    ("good morning", "French", "bonjour"),
    ("thank you", "French", "merci"),
    ("I would like a coffee", "French", "je voudrais un café"),
    ("good morning", "Russian", "доброе утро"),
    ("thank you", "Russian", "спасибо"),
    ("how are you?", "Russian", "как дела?"),
    ("good morning", "Chinese", "早上好 (zǎoshang hǎo)"),
    ("thank you", "Chinese", "谢谢 (xièxie)"),
    ("how much is it?", "Chinese", "多少钱？(duōshao qián?)"),
    ("good night", "Italian", "buona notte"),
    ("see you tomorrow", "Italian", "a domani"),
    ("good night", "Japanese", "おやすみなさい (oyasuminasai)"),
]

FOREIGN = {
    "German": {
        "chat": [
            ("Hallo! Wie geht es dir?", "Hallo! Mir geht es gut, danke. Wie kann ich dir helfen?"),
            (
                "Kannst du mir ein Rezept für Pfannkuchen geben?",
                "Gern! Du brauchst:\n\n1. 200 g Mehl\n2. 2 Eier\n3. 300 ml Milch\n4. eine Prise Salz\n\n"
                "Alles verrühren und in einer heißen Pfanne von beiden Seiten goldbraun backen.",
            ),
            ("Was ist die Hauptstadt von Österreich?", "Die Hauptstadt von Österreich ist **Wien**."),
        ],
        "sum_q": "Wie viel ist {a} + {b}?",
        "sum_a": "{a} + {b} = {c}\n\nDas Ergebnis ist **{c}**.",
    },
    "Spanish": {
        "chat": [
            ("¡Hola! ¿Qué tal?", "¡Hola! Muy bien, gracias. ¿En qué puedo ayudarte?"),
            ("¿Cuál es la capital de Argentina?", "La capital de Argentina es **Buenos Aires**."),
            (
                "Dame tres consejos para aprender a cocinar.",
                "Claro:\n\n1. Empieza con recetas sencillas.\n2. Prueba la comida mientras cocinas.\n"
                "3. Ten todos los ingredientes listos antes de empezar.",
            ),
        ],
        "sum_q": "¿Cuánto es {a} + {b}?",
        "sum_a": "{a} + {b} = {c}\n\nEl resultado es **{c}**.",
    },
    "French": {
        "chat": [
            ("Bonjour ! Comment ça va ?", "Bonjour ! Très bien, merci. Comment puis-je vous aider ?"),
            ("Quelle est la capitale du Canada ?", "La capitale du Canada est **Ottawa**."),
        ],
        "sum_q": "Combien font {a} + {b} ?",
        "sum_a": "{a} + {b} = {c}\n\nLe résultat est **{c}**.",
    },
    "Russian": {
        "chat": [
            ("Привет! Как дела?", "Привет! Всё хорошо, спасибо. Чем могу помочь?"),
            ("Какая столица Японии?", "Столица Японии — **Токио**."),
            (
                "Посоветуй, как лучше спать.",
                "Вот несколько советов:\n\n1. Ложитесь спать в одно и то же время.\n"
                "2. Проветривайте комнату.\n3. Не пейте кофе вечером.",
            ),
        ],
        "sum_q": "Сколько будет {a} + {b}?",
        "sum_a": "{a} + {b} = {c}\n\nОтвет: **{c}**.",
    },
    "Chinese": {
        "chat": [
            ("你好！你今天怎么样？", "你好！我很好，谢谢。有什么可以帮你的吗？"),
            ("中国的首都是哪里？", "中国的首都是**北京**。"),
            (
                "给我三个学习编程的建议。",
                "好的：\n\n1. 每天写一点代码。\n2. 从小项目开始。\n3. 多读别人的代码。",
            ),
        ],
        "sum_q": "{a} 加 {b} 等于多少？",
        "sum_a": "{a} + {b} = {c}\n\n答案是 **{c}**。",
    },
}
